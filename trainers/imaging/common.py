"""What both imaging trainers share: where the measurements come from, the `test_*` metrics
against a ground truth (simulations only: reported, never read by a decision), and the
reconstruction written out as data at the end of a run.
"""
from __future__ import annotations

import abc
import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.base import Trainer
from trainers.imaging import forward as fw
from trainers.imaging.experiment import Experiment, experiment_keys, load_experiment
from trainers.imaging.metrics import image_metrics

RECONSTRUCTION_DIR = "reconstruction"
# the per-iteration columns of quality.csv, where a run has them
QUALITY_COLUMNS = ("iteration", "sample", "retry", "loss", "residual", "val_loss",
                   "test_ssim", "test_psnr", "test_rmse", "ceiling_ssim")


class ImagingTrainer(Trainer):
    """A Trainer over an `Experiment`; subclasses define `reconstruction()` (N x N, centred)."""

    experiment: Experiment
    # the measurements (simulated or read) are the same for every trial of a search that does
    # not vary how they are made: built once, on the CPU, whatever device trains
    shared_data_keys = experiment_keys()

    @classmethod
    def build_shared_data(cls, config) -> Experiment:
        return load_experiment(config, torch.device("cpu"))

    def load_experiment(self, experiment: Experiment | None = None) -> Experiment:
        """This run's copy of the experiment on its device (`experiment`, or the shared data)."""
        self.experiment = (experiment if experiment is not None else self.shared_data()).on(self.device)
        self.obj_size = self.experiment.obj_size
        self.positions = self.experiment.positions
        self.coverage = self.experiment.coverage
        self.ceiling = self.experiment.ceiling
        return self.experiment

    @abc.abstractmethod
    def reconstruction(self) -> torch.Tensor:
        """The current complex object estimate (obj_size x obj_size)."""

    def test_metrics(self, reconstruction: torch.Tensor, prefix: str = "test_") -> dict[str, float]:
        """SSIM/PSNR/RMSE against the ground truth, when the measurements were simulated."""
        if self.experiment.truth is None:
            return {}
        metrics = image_metrics(reconstruction, self.experiment.truth, self.obj_size)
        return {**{f"{prefix}{key}": value for key, value in metrics.items()}, "ceiling_ssim": self.ceiling}

    def _finish(self, metrics: dict[str, float], stopped_early: bool, seconds: float):
        # the last iterate, before the loop restores the best state (both are written out)
        self.last_reconstruction = self.reconstruction().detach().clone()
        return super()._finish(metrics, stopped_early, seconds)

    def save_outputs(self) -> None:
        super().save_outputs()
        if self.context.output_dir is not None:
            write_reconstruction(Path(self.context.output_dir) / RECONSTRUCTION_DIR, self.reconstruction(),
                                 getattr(self, "last_reconstruction", None), self.history, self.obj_size)


def write_reconstruction(folder: Path, best: torch.Tensor, last: torch.Tensor | None,
                         history: list[dict[str, float]], obj_size: int) -> list[Path]:
    """reconstruction.npy (the selected state; complex64, the N x N grid), reconstruction_last.npy
    (the last iterate), 16-bit PNGs of the amplitude and phase of the object window of each, and
    quality.csv (one row per iteration). Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, field in (("reconstruction", best), ("reconstruction_last", last)):
        if field is None:
            continue
        array = field.detach().to(torch.complex64).cpu().numpy()
        np.save(folder / f"{name}.npy", array)
        written.append(folder / f"{name}.npy")
        window = fw.crop_to_object(torch.from_numpy(array), obj_size).numpy()
        written += [_png16(np.abs(window), folder / f"{name}_amplitude.png", 0.0, max(1.0, float(np.abs(window).max()))),
                    _png16(np.angle(window), folder / f"{name}_phase.png", -math.pi, math.pi)]
    rows = [{key: row.get(key, "") for key in QUALITY_COLUMNS} for row in history]
    columns = [key for key in QUALITY_COLUMNS if any(row[key] != "" for row in rows)]
    with open(folder / "quality.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    written.append(folder / "quality.csv")
    return written


def _png16(values: np.ndarray, path: Path, low: float, high: float) -> Path:
    """A 16-bit grey PNG: `low`..`high` mapped linearly to 0..65535 (amplitude 0..max(1, peak),
    phase -pi..pi)."""
    from PIL import Image

    scaled = np.clip((values - low) / (high - low), 0, 1) * 65535
    # the lightest zlib level: a search writes these for every trial, and the default level
    # takes about twice as long for a file a few percent smaller
    Image.fromarray(np.round(scaled).astype(np.uint16)).save(path, compress_level=1)
    return path


def state_copy(state: Any) -> Any:
    """A deep copy of a dict of tensors (a retry's snapshot)."""
    if isinstance(state, dict):
        return {key: state_copy(value) for key, value in state.items()}
    if isinstance(state, list):
        return [state_copy(value) for value in state]
    return state.clone() if isinstance(state, torch.Tensor) else state
