"""What an imaging run starts from: the measured intensities, the positions they were taken
at and, for a simulation, the ground truth (used for `test_*` metrics only, never for a decision).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from trainers.imaging import forward as fw
from trainers.imaging import sampling
from trainers.imaging.config import ImagingConfig
from trainers.imaging.metrics import image_metrics
from trainers.imaging.objects import load_object


def sample_positions(config: ImagingConfig, n_per_line: int) -> torch.Tensor:
    """(n, k, 2) aperture positions [y, x] from DC: k = 1 for points, n_per_line along lines."""
    if config.pattern in sampling.PATTERNS:
        points = sampling.generate_pattern(config.pattern, config.n_samples, config.radius_px(),
                                           seed=config.pattern_seed, grid_spacing=config.grid_spacing,
                                           star_lines=config.star_lines)
    else:
        points = sampling.load_pattern_file(config.pattern, config)
    if points.ndim == 2 and config.sample_length > 0:
        points = sampling.lines_from_centres(points, config.sample_length, config.line_angle)
    if points.ndim == 3:  # line ends
        return sampling.line_positions(points, n_per_line)
    return points[:, None, :]



@dataclass
class Experiment:
    """The measurements of one run. `images` (n, N, N) are the centred measured intensities,
    `positions_meas` the positions they were taken at, `positions` those the reconstruction
    models ((n, k, 2) each). `truth`/`truth_small` and `ceiling` (the band-limited SSIM of the
    union of the pupils) exist for a simulation only (None for measured data)."""

    images: torch.Tensor
    positions_meas: torch.Tensor
    positions: torch.Tensor
    obj_size: int
    coverage: torch.Tensor
    truth_small: torch.Tensor | None = None
    truth: torch.Tensor | None = None
    ceiling: float | None = None

    def on(self, device: torch.device) -> "Experiment":
        """A new Experiment whose measured images and truth are on `device` (where the engines
        read them); the positions, coverage and small truth stay on the CPU, as built. Never
        changes this one, which may be a search's shared copy."""
        return replace(self, images=None if self.images is None else self.images.to(device),
                       truth=None if self.truth is None else self.truth.to(device))


# the config keys an Experiment is built from: every ImagingConfig key that TrainerConfig lacks
def experiment_keys() -> tuple[str, ...]:
    from trainers.config import TrainerConfig

    return tuple(key for key in ImagingConfig.model_fields if key not in TrainerConfig.model_fields)


def simulate_experiment(config: ImagingConfig, device: torch.device) -> Experiment:
    """The simulated measurements of `config` (its object, pattern and noise)."""
    grid, diameter = config.image_size, config.sample_diameter
    obj_size = config.object_size_px()
    truth_small = load_object(config.image, obj_size)
    truth = fw.pad_to_grid(truth_small, grid).to(device)
    positions_meas = sample_positions(config, config.samples_per_line_meas)
    positions = sample_positions(config, config.samples_per_line_rec)
    images = fw.simulate(truth_small.to(device), positions_meas.to(device), diameter, grid,
                         config.snr, config.noise, config.noise_seed)
    coverage = sampling.coverage_mask(positions, diameter, grid)
    reference = sampling.band_limited_reference(truth_small, coverage).to(device)
    ceiling = image_metrics(reference, truth, obj_size)["ssim"]
    return Experiment(images, positions_meas, positions, obj_size, coverage, truth_small, truth, ceiling)


def load_experiment(config: ImagingConfig, device: torch.device) -> Experiment:
    """The measured file of `config.measurements`, or else the simulation of `config`."""
    if getattr(config, "measurements", None):
        from trainers.imaging.measured import read_measurements

        return read_measurements(config.measurements, config, device)
    return simulate_experiment(config, device)
