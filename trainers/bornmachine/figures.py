"""Figures of the Born-machine trainers: confusion matrix, generated samples (matplotlib, headless)."""
from __future__ import annotations

import math

import numpy as np

from trainers.plots import plt


def confusion_figure(counts: np.ndarray, class_names: list[str], title: str):
    size = max(3.5, 0.45 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(counts, cmap="Blues")
    for (row, column), value in np.ndenumerate(counts):
        axis.text(column, row, str(value), ha="center", va="center", fontsize=8,
                  color="white" if value > counts.max() / 2 else "black")
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, fontsize=8)
    axis.set_yticks(ticks, class_names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def scatter_figure(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
                   class_names: list[str], feature_names: list[str], title: str):
    """Generated samples over the data, one panel per class (2-D data)."""
    classes = len(class_names)
    figure, axes = plt.subplots(1, classes, figsize=(3.6 * classes, 3.4), squeeze=False)
    for c, axis in enumerate(axes[0]):
        axis.scatter(*real[real_labels == c].T, s=6, color="0.6", label="data")
        axis.scatter(*fake[fake_labels == c].T, s=4, color=f"C{c}", alpha=0.5, label="generated")
        axis.set_title(f"class {class_names[c]}", fontsize=9)
        axis.set_xlabel(feature_names[0])
        axis.set_ylabel(feature_names[1])
        axis.legend(fontsize=7, loc="best")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def image_grid_figure(fake: np.ndarray, fake_labels: np.ndarray, class_names: list[str], per_class: int = 8):
    """Generated images, one row per class (features that form a square image, like digits)."""
    side = int(math.isqrt(fake.shape[1]))
    classes = len(class_names)
    figure, axes = plt.subplots(classes, per_class, figsize=(per_class * 0.8, classes * 0.8), squeeze=False)
    for c in range(classes):
        images = fake[fake_labels == c][:per_class]
        for k, axis in enumerate(axes[c]):
            if k < len(images):
                axis.imshow(images[k].reshape(side, side), cmap="gray_r")
            axis.axis("off")
        axes[c][0].set_title(class_names[c], fontsize=7, loc="left")
    figure.tight_layout()
    return figure
