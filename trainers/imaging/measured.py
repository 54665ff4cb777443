"""Measured data in (and out, for tests and benchmarks): PtyLab's HDF5 format for Fourier
ptychography (FPM) <-> an `Experiment`.

PtyLab's FPM file holds the datasets `ptychogram` (n, Np, Np) measured low-resolution
intensities, `wavelength`, `encoder` (n, 2) LED positions, `dxd` the camera pixel, `zled` the
LED-to-sample distance, `magnification` (all in metres), and optionally `NA`. Our model is read
from them the way PtyLab reads it:

- the object pixel dxo = dxd / magnification; an LED at (x, y, zled) shifts the spectrum by
  conv * sin(angle) pixels, conv = -dxo Np / wavelength (PtyLab's `Reconstruction.positions`),
  rounded: these are our aperture centres [y, x] from DC;
- the pupil diameter in spectrum pixels is d = 2 NA dxo Np / wavelength (`NA` is required here:
  our pupil is known);
- PtyLab's model is |fft2(window x pupil)|^2 with a forward FFT, so its frames are ours
  point-reflected and centred: ours = flip(roll(ifftshift(frame), -1)). Frames of Np >= 2d + 1
  pixels hold every sample of the band-limited intensity, and are resampled exactly onto our
  N x N grid (`frames.from_frames`); N (`image_size`) and the support (`obj_size`) come from
  the config, as PtyLab's own reconstruction grid does.

There is no ground truth in such a file: the run reports no `test_*` metrics. Intensities are
used as they are: the engines clamp the object's amplitude to [0, 1] (mopie's value_range), so
data in other units are to be scaled (or run with value_range=none).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainers.imaging import sampling
from trainers.imaging.experiment import Experiment
from trainers.imaging.frames import from_frames

REQUIRED = ("ptychogram", "wavelength", "encoder", "dxd", "zled", "magnification", "NA")
SCALARS = ("wavelength", "dxd", "zled", "magnification", "NA")


class MeasurementError(ValueError):
    """A measurements file that is missing a dataset or does not fit the config; names the dataset."""


def read_measurements(path: str | Path, config, device: torch.device | None) -> Experiment:
    """The `Experiment` of a PtyLab FPM file, checked against `config` (grid, support)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise MeasurementError(f"not an HDF5 file ({error})") from None
    with handle:
        missing = [key for key in REQUIRED if key not in handle]
        if missing:
            raise MeasurementError(f"missing dataset {', '.join(repr(k) for k in missing)} "
                                   f"(a PtyLab FPM file has {', '.join(REQUIRED)})")
        data = {key: np.asarray(handle[key][()]) for key in REQUIRED}
    scalars = {}
    for key in SCALARS:
        value = data[key].squeeze()
        if value.ndim != 0 or not np.isfinite(value) or value <= 0:
            raise MeasurementError(f"dataset {key!r} must be one positive finite number, got {data[key]!r}")
        scalars[key] = float(value)
    frames = data["ptychogram"].astype(np.float32)
    if frames.ndim != 3 or frames.shape[1] != frames.shape[2] or frames.shape[0] < 1:
        raise MeasurementError(f"dataset 'ptychogram' must be (n, Np, Np) square frames, got shape {frames.shape}")
    if not np.isfinite(frames).all():
        raise MeasurementError(f"dataset 'ptychogram' holds {int((~np.isfinite(frames)).sum())} NaN/inf values")
    count, frame = frames.shape[0], frames.shape[-1]
    encoder = data["encoder"].astype(np.float64)
    if encoder.shape != (count, 2):
        raise MeasurementError(f"dataset 'encoder' must be ({count}, 2), one LED position per frame of "
                               f"'ptychogram', got shape {encoder.shape}")
    if not np.isfinite(encoder).all():
        raise MeasurementError("dataset 'encoder' holds NaN/inf values")

    dxo = scalars["dxd"] / scalars["magnification"]
    conv = -dxo * frame / scalars["wavelength"]
    sines = encoder / np.sqrt(np.square(encoder).sum(axis=1, keepdims=True) + scalars["zled"] ** 2)
    # column for column: PtyLab's window offsets keep the encoder's column order, ours are [y, x]
    centres = torch.from_numpy(np.round(conv * sines)).to(torch.float32)
    diameter = 2 * scalars["NA"] * dxo * frame / scalars["wavelength"]
    grid = config.image_size
    if abs(diameter - config.sample_diameter) > 0.5:
        raise MeasurementError(f"dataset 'NA' gives a pupil of {diameter:.2f} px; set sample_diameter to it "
                               f"(it is {config.sample_diameter})")
    diameter = float(config.sample_diameter)
    limit = grid / 2 - 1
    reach = centres.norm(dim=1) + diameter / 2
    if (reach > limit).any():
        worst = int(reach.argmax())
        raise MeasurementError(f"dataset 'encoder': frame {worst} puts its pupil {float(reach[worst]):.1f} px from "
                               f"DC, outside the {grid} grid (at most {limit:g}); raise image_size")
    if frame < 2 * diameter + 1:
        raise MeasurementError(f"dataset 'ptychogram': frames of {frame} px cannot hold intensities band-limited "
                               f"to 2 x {diameter:g} px; need >= {int(np.ceil(2 * diameter + 1))}")
    if device is None:  # a check only (config.check_files): the file is fine
        return None
    ours = torch.flip(torch.roll(torch.fft.ifftshift(torch.from_numpy(frames), dim=(-2, -1)), (-1, -1), (-2, -1)),
                      dims=(-2, -1))
    images = from_frames(ours.to(device), grid, diameter)
    positions = centres[:, None, :]
    coverage = sampling.coverage_mask(positions, diameter, grid)
    return Experiment(images, positions, positions, config.object_size_px(), coverage)


def write_ptylab_fpm(path: str | Path, frames: torch.Tensor, centres: torch.Tensor, diameter: float,
                     wavelength: float = 500e-9, magnification: float = 10.0, zled: float = 0.1) -> Path:
    """Our engine frames (n, M, M) (DC sample at [0, 0]) taken at integer `centres` (n, 2) [y, x]
    -> a PtyLab FPM file whose model reproduces them (the inverse of `read_measurements`)."""
    import h5py

    frame = frames.shape[-1]
    # a camera pixel that keeps every illumination angle well below 90 degrees (|conv| = 2 x the reach)
    reach = float(centres.abs().max()) + diameter
    dxd = 2 * reach * wavelength * magnification / frame
    dxo = dxd / magnification
    conv = -dxo * frame / wavelength
    sines = centres.double().numpy() / conv
    encoder = sines * zled / np.sqrt(1 - np.square(sines).sum(axis=1, keepdims=True))
    ptychogram = torch.fft.fftshift(torch.roll(torch.flip(frames, dims=(-2, -1)), (1, 1), (-2, -1)), dim=(-2, -1))
    with h5py.File(path, "w") as handle:
        handle["ptychogram"] = ptychogram.cpu().numpy().astype(np.float32)
        handle["encoder"] = encoder
        for key, value in (("wavelength", wavelength), ("dxd", dxd), ("zled", zled), ("magnification", magnification),
                           ("NA", diameter * wavelength / (2 * dxo * frame))):
            handle[key] = value
    return Path(path)


def write_simulation(path: str | Path, config, frame: int | None = None) -> tuple[Path, torch.Tensor]:
    """The simulated measurements of `config`, at its aperture centres rounded to whole pixels
    (PtyLab's windows sit on whole pixels), written as a PtyLab FPM file with frames of `frame`
    px (default the smallest even size >= 2d + 2). Returns the file and the ground truth
    (N x N) for checking a reconstruction of it."""
    from trainers.imaging import forward as fw
    from trainers.imaging.experiment import sample_positions
    from trainers.imaging.frames import to_frames
    from trainers.imaging.objects import load_object

    if config.sample_length > 0 or config.samples_per_line_meas > 1:
        raise ValueError("PtyLab's FPM files hold point samples only")
    obj_size, grid, diameter = config.object_size_px(), config.image_size, config.sample_diameter
    truth_small = load_object(config.image, obj_size)
    centres = sample_positions(config, 1)[:, 0].round()
    images = fw.simulate(truth_small, centres, diameter, grid, config.snr, config.noise, config.noise_seed)
    frame = frame or 2 * int(np.ceil(diameter + 1))
    return write_ptylab_fpm(path, to_frames(images, frame, diameter), centres, diameter), \
        fw.pad_to_grid(truth_small, grid)
