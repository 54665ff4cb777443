"""Feed PtyLab 0.3.7 (FPM mode) the measurements our `mopie` trainer simulated, and read its
result back with our metrics. The recipe is the spec's (specs/imaging.md, "Feeding PtyLab our
measurements"); this module only imports PtyLab inside functions, so importing it is free.

Conventions, ours -> PtyLab:
- PtyLab's object is the high-resolution spectrum (DC at No//2), its probe the pupil on an
  Np x Np frame, its model |fftshift(fft2(ifftshift(window x probe)))|^2: a *forward* FFT where
  we use an inverse one, so its frames are ours point-reflected (k -> -k). Our engine's frames
  (`MopieEngine.frames`, the exact low-res samples of the measured intensities with the DC
  sample at [0, 0]) become PtyLab's by that reflection plus an fftshift.
- PtyLab derives each window's top-left corner from an LED position (`encoder`), `zled`,
  the wavelength and the pixel size: round(conv * sin(angle)) + No//2 - Np//2 with
  conv = -dxo * Np / wavelength. We invert that so the corners are exactly our rounded aperture
  centres + No//2 - Np//2, i.e. PtyLab's spectrum IS our centred spectrum O, padded.
- No = N + Np: our windows wrap around the N-periodic spectrum, PtyLab's may not leave the array.
  Every pupil lies inside our N x N grid, so the padding is never seen through a pupil.
- Back to real space: the central N x N of PtyLab's spectrum, our `to_image`, the modulus.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from trainers.imaging import forward as fw
from trainers.imaging.metrics import image_metrics

ENGINES = ("ePIE", "mPIE", "qNewton")
WAVELENGTH = 500e-9    # arbitrary: only conv = dxo * Np / wavelength matters, chosen below
MAGNIFICATION = 10.0
ZLED = 0.1


def available() -> tuple[bool, str]:
    """Whether PtyLab imports, and its version (or the import error)."""
    from importlib import import_module
    from importlib.metadata import version

    try:
        import_module("PtyLab")  # imports its dependencies too (h5py, scipy, skimage...)
        return True, version("ptylab")
    except Exception as error:  # ImportError, or a missing dependency of PtyLab
        return False, f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------- our data -> PtyLab's
def ptylab_frames(frames: torch.Tensor) -> np.ndarray:
    """Our engine's frames (n, M, M), DC sample at [0, 0] -> PtyLab's: point-reflected, centred."""
    reflected = torch.roll(torch.flip(frames, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return torch.fft.fftshift(reflected, dim=(-2, -1)).numpy().astype(np.float32)


def encoder_for(corners: np.ndarray, conv: float) -> np.ndarray:
    """LED positions [m] whose PtyLab window offsets round(conv * sin) are exactly `corners` (px)."""
    sines = corners / conv
    if np.abs(sines).max() >= 0.9:
        raise ValueError("choose a larger conv: an illumination angle would reach 90 degrees")
    norm = np.sqrt(1 - np.square(sines).sum(axis=1, keepdims=True))
    return sines * ZLED / norm


@dataclass
class Problem:
    """What both sides share: the measurements, where they were taken, the truth, the ceiling."""
    frames: torch.Tensor        # (n, M, M) our engine's frames
    centres: torch.Tensor       # (n, 2) aperture centres [y, x] from DC (may be fractional)
    diameter: float
    grid: int                   # N
    obj_size: int
    truth: torch.Tensor         # (N, N) ground-truth amplitude, padded
    ceiling: float              # band-limited reference SSIM
    initial: torch.Tensor | None = None  # mopie's initial object (N x N): PtyLab starts from it too

    @classmethod
    def from_trainer(cls, trainer) -> "Problem":
        config = trainer.config
        if trainer.positions.shape[1] != 1:
            raise ValueError("PtyLab gets point samples only (no line/motion samples)")
        return cls(trainer.engine.frames.cpu(), trainer.positions[:, 0].cpu(), config.sample_diameter,
                   config.image_size, trainer.obj_size, trainer.experiment.truth.cpu(), trainer.ceiling,
                   trainer.initial_guess.cpu())


def build(problem: Problem, engine: str, seed: int = 0, **engine_params):
    """A ready PtyLab engine on our measurements: (engine, reconstruction, padded size No)."""
    from PtyLab import Engines, ExperimentalData, Params, Reconstruction
    from PtyLab.Monitor.Monitor import DummyMonitor

    np.random.seed(seed)  # PtyLab's initial guesses and mPIE's momentum draws use np.random
    frame = problem.frames.shape[-1]
    padded = problem.grid + frame
    data = ExperimentalData(operationMode="FPM")
    data.ptychogram = ptylab_frames(problem.frames)
    data.wavelength, data.magnification, data.zled = WAVELENGTH, MAGNIFICATION, ZLED
    data.NA = None
    # pixel size chosen so that |conv| = 2N: every illumination angle stays well below 90 deg
    data.dxd = 2 * problem.grid * WAVELENGTH * MAGNIFICATION / frame
    conv = -(1 / WAVELENGTH) * (data.dxd / MAGNIFICATION) * frame
    data.encoder = encoder_for(problem.centres.round().numpy().astype(np.float64), conv)
    data._setData()

    params = Params()
    params.gpuSwitch = False
    params.positionOrder = "NA"
    params.probeBoundary = False
    params.probePowerCorrectionSwitch = False
    params.comStabilizationSwitch = False
    params.intensityConstraint = "standard"
    params.fftshiftSwitch = False

    reconstruction = Reconstruction(data, params)
    reconstruction.No = padded   # by hand: else it builds a grid from the LED range
    reconstruction.initializeObjectProbe()
    if problem.initial is not None:  # the same start as mopie: its initial object's spectrum, padded
        pad = (padded - problem.grid) // 2
        reconstruction.object[...] = np.pad(fw.to_spectrum(problem.initial).numpy(), pad)
    # the exact binary disc: centred in the frame like our discs (offset 0), amplitude 1
    disc = fw.pupil_masks(torch.zeros(2), problem.diameter, frame).numpy()
    reconstruction.probe = (reconstruction.probe * 0 + disc).astype(np.complex64)

    expected = problem.centres.round().long().numpy() + padded // 2 - frame // 2
    if not np.array_equal(reconstruction.positions, expected):
        raise AssertionError("PtyLab's window positions differ from our aperture centres")
    solver = getattr(Engines, engine)(reconstruction, data, params, DummyMonitor())
    solver.betaProbe = 0.0  # a known pupil
    for key, value in engine_params.items():
        setattr(solver, key, value)
    return solver, reconstruction, padded


# ---------------------------------------------------------------- PtyLab's data -> ours
def spectrum_to_object(spectrum: np.ndarray, grid: int) -> torch.Tensor:
    """PtyLab's (..., No, No) spectrum -> our complex N x N object (the central N x N window)."""
    plane = np.asarray(spectrum).reshape(-1, *spectrum.shape[-2:])[0]
    start = plane.shape[-1] // 2 - grid // 2
    centre = torch.from_numpy(np.ascontiguousarray(plane[start:start + grid, start:start + grid]))
    return fw.to_image(centre.to(torch.complex64))


def metrics_of(spectrum: np.ndarray, problem: Problem) -> dict[str, float]:
    """Our SSIM / PSNR / RMSE of a PtyLab spectrum (modulus, cropped to the object window)."""
    return image_metrics(spectrum_to_object(spectrum, problem.grid), problem.truth, problem.obj_size)


def forward_check(problem: Problem) -> dict[str, float]:
    """Relative error of PtyLab's own forward model, at the true spectrum, against our frames.

    Each aperture's exit wave goes through PtyLab's `object2detector` (its Fraunhofer FFT);
    per aperture ||I_ptylab - I_ours|| / ||I_ours||, and the max and median over apertures.
    """
    solver, reconstruction, padded = build(problem, "ePIE")
    pad = (padded - problem.grid) // 2
    reconstruction.object[...] = np.pad(fw.to_spectrum(problem.truth).numpy(), pad)
    measured = solver.experimentalData.ptychogram
    frame = problem.frames.shape[-1]
    errors = []
    for index, (row, col) in enumerate(reconstruction.positions):
        reconstruction.esw = reconstruction.object[..., row:row + frame, col:col + frame] * reconstruction.probe
        solver.object2detector()
        model = (np.abs(reconstruction.ESW) ** 2).sum(axis=(0, 1, 2))[-1]
        errors.append(np.linalg.norm(model - measured[index]) / np.linalg.norm(measured[index]))
    return {"max": float(np.max(errors)), "median": float(np.median(errors))}


def readback_check(problem: Problem) -> float:
    """SSIM that `metrics_of` gives the true spectrum laid out as PtyLab holds it (should be 1)."""
    padded = problem.grid + problem.frames.shape[-1]
    pad = (padded - problem.grid) // 2
    return metrics_of(np.pad(fw.to_spectrum(problem.truth).numpy(), pad), problem)["ssim"]


# ---------------------------------------------------------------- a timed run
@dataclass
class Trace:
    """Per-iteration wall time (since reconstruct() began) and our metrics after it."""
    init: dict[str, float] = field(default_factory=dict)   # metrics of the initial guess
    seconds: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)


def run(problem: Problem, engine: str, iterations: int, seed: int = 0, **engine_params) -> Trace:
    """Run one PtyLab engine for `iterations`, recording the time and a copy of the spectrum after
    each iteration; metrics are computed afterwards, outside the timed loop.

    Every PtyLab engine ends an iteration with `showReconstruction(loop)`, so that is where we
    take the snapshot (a copy of the spectrum: microseconds against tens of ms per iteration).
    Setup (data, initial guesses) is outside the clock; `_prepareReconstruction` is inside.
    """
    solver, reconstruction, _ = build(problem, engine, seed, **engine_params)
    solver.numIterations = iterations
    trace = Trace(init=metrics_of(reconstruction.object, problem))
    snapshots, stamps = [], []
    shown = solver.showReconstruction

    def snapshot(loop, force=False):
        shown(loop, force)
        stamps.append(time.perf_counter())
        snapshots.append(reconstruction.object.copy())

    solver.showReconstruction = snapshot
    started = time.perf_counter()
    _quietly(solver.reconstruct)
    for stamp, spectrum in zip(stamps, snapshots):
        trace.seconds.append(stamp - started)
        trace.metrics.append(metrics_of(spectrum, problem))
    if not all(math.isfinite(m["ssim"]) for m in trace.metrics):
        raise FloatingPointError(f"PtyLab {engine} diverged")
    return trace


def run_stepwise(problem: Problem, engine: str, iterations: int, every: int, seed: int = 0,
                 **engine_params) -> Trace:
    """Like `run`, with a snapshot every `every` scan positions inside each iteration too (and
    one at each iteration's end). Only ePIE can: its `reconstruct_stepwise` yields after every
    position. The clock is paused while a snapshot is copied, so the trace times the engine."""
    solver, reconstruction, _ = build(problem, engine, seed, **engine_params)
    if not hasattr(solver, "reconstruct_stepwise"):
        raise ValueError(f"PtyLab {engine} has no stepwise reconstruction")
    solver.numIterations = iterations
    trace = Trace(init=metrics_of(reconstruction.object, problem))
    snapshots, stamps, paused = [], [], [0.0]
    shown = solver.showReconstruction

    def snapshot():
        pause = time.perf_counter()
        stamps.append(pause - started - paused[0])
        snapshots.append(reconstruction.object.copy())
        paused[0] += time.perf_counter() - pause

    def at_the_end(loop, force=False):
        shown(loop, force)
        snapshot()

    solver.showReconstruction = at_the_end

    def steps():
        for _, position in solver.reconstruct_stepwise():
            if (position + 1) % every == 0:
                snapshot()

    started = time.perf_counter()
    _quietly(steps)
    trace.seconds = stamps
    trace.metrics = [metrics_of(spectrum, problem) for spectrum in snapshots]
    return trace


def _quietly(function):
    """Run with PtyLab's progress bars and banner silenced (they write to stdout)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return function()
