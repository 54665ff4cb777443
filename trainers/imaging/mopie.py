"""`mopie`: a batched ePIE / mPIE engine for synthetic-aperture imaging with a known pupil.

The unknown is the object's centred spectrum O (N x N, complex). One iteration is one epoch over
every sample, in a seeded random order, in mini-batches of `batch_size` samples:

- each aperture position only touches an M x M window of the spectrum around its centre, so the
  model works on low-resolution *frames*: phi = ifft2(O_window * P) is the image field sampled
  every s = N/M pixels, and the matching measurement is `ifftshift(I)[::s, ::s] * s^2` (exact:
  the window's offset only adds a phase ramp, which |.|^2 removes). With M >= 2d the frames keep
  every bit of the band-limited intensity, and an FFT of M^2 instead of N^2 is where the speed
  comes from; `frame_size = image_size` gives full-grid FFTs;
- modulus replacement psi = phi * sqrt(I_m / (I_r + eps)), I_r the mean over a line's positions;
- object step O += alpha * sum conj(P) (Psi - Phi) / sum |P|^2: the corrections of a batch are
  added and divided, per spectrum pixel, by the batch's summed pupil coverage. A batch of one
  is exactly ePIE (|P| = 1); a big batch averages the corrections where apertures overlap
  instead of over-stepping, which is why mini-batches converge per epoch like sequential ePIE;
- optional probe step: a shared complex pupil (aberration) inside each aperture's known disc,
  P += beta * sum conj(O) disc (Psi - Phi) / sum |O|^2 disc;
- real-space constraints after each batch (support window, real [0, 1] or |.| <= 1);
- mPIE momentum (Maiden et al. 2017) every `momentum_every` batches: v = eta v + (O - O_then),
  O += eta v.

Measurements are indexed by sample id; the epoch's order only decides which ids form a batch.
"""
from __future__ import annotations

from typing import Any

import torch

from trainers.base import Trainer, make_scheduler
from trainers.imaging import forward as fw
from trainers.imaging import sampling
from trainers.imaging.metrics import image_metrics
from trainers.imaging.mopie_config import MopieConfig
from trainers.imaging.objects import load_object

STATE_KEYS = ("spectrum", "probe", "velocity", "probe_velocity", "anchor", "probe_anchor")


# ---------------------------------------------------------------- data from a config
def sample_positions(config: MopieConfig, n_per_line: int) -> torch.Tensor:
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


def auto_frame_size(grid: int, diameter: float) -> int:
    """The smallest N/s (s integer) holding 2d + 2 px: the whole band of the intensity."""
    for stride in range(grid, 0, -1):
        if grid % stride == 0 and grid // stride >= 2 * diameter + 2:
            return grid // stride
    return grid


def to_frames(images: torch.Tensor, frame: int) -> torch.Tensor:
    """Full-grid intensities (n, N, N) -> frames (n, M, M) on the stride-s sample points."""
    stride = images.shape[-1] // frame
    unshifted = torch.fft.ifftshift(images, dim=(-2, -1))
    return unshifted[..., ::stride, ::stride] * stride**2


# ---------------------------------------------------------------- the engine
class MopieEngine:
    """Object/probe state and the batched update; plain torch, on the frames' device."""

    def __init__(self, frames: torch.Tensor, positions: torch.Tensor, diameter: float, grid: int,
                 obj_size: int, *, learn_probe: bool = False, support: bool = True,
                 value_range: str = "real", eps: float | None = None):
        self.device = frames.device
        self.frames = frames.clamp_min(0)            # (n, M, M); Gaussian noise may go negative
        self.grid, self.frame = grid, frames.shape[-1]
        self.obj_size, self.learn_probe = obj_size, learn_probe
        self.value_range = value_range
        self.eps = eps if eps is not None else 1e-6 * float(self.frames.mean()) + 1e-30
        rounded = positions.round()
        # window top-left corners in the centred spectrum array, and each pupil within its window
        self.corners = (rounded + grid // 2 - self.frame // 2).long().to(self.device)          # (n, k, 2)
        self.discs = fw.pupil_masks(positions - rounded, diameter, self.frame).to(self.device)  # (n, k, M, M)
        self.window_support = fw.pad_to_grid(torch.ones(obj_size, obj_size), grid).to(self.device) \
            if support else None
        self.probe_support = fw.pupil_masks(torch.zeros(2), diameter + 2, self.frame).to(self.device)
        self.spectrum = torch.zeros(grid, grid, dtype=torch.complex64, device=self.device)
        self.probe = torch.ones(self.frame, self.frame, dtype=torch.complex64, device=self.device)
        self.reset_momentum()

    # ----- state
    def reset_momentum(self) -> None:
        self.velocity = torch.zeros_like(self.spectrum)
        self.probe_velocity = torch.zeros_like(self.probe)
        self.anchor, self.probe_anchor = self.spectrum.clone(), self.probe.clone()

    def initialise(self, image: torch.Tensor) -> None:
        """Start from an amplitude image (N x N, e.g. sqrt of the DC measurement), constrained."""
        self.spectrum = fw.to_spectrum(image.to(self.device))
        self.constrain()
        self.reset_momentum()

    def state(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, key).clone() for key in STATE_KEYS}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for key in STATE_KEYS:
            setattr(self, key, state[key].to(self.device))

    def reconstruction(self) -> torch.Tensor:
        """The current object estimate (N x N, complex)."""
        return fw.to_image(self.spectrum)

    # ----- one epoch
    def epoch(self, order: torch.Tensor, batch_size: int, alpha: float, beta: float,
              momentum: float, momentum_every: int) -> torch.Tensor:
        """Update over the ids in `order`; returns the epoch's relative amplitude error (a tensor)."""
        error = torch.zeros((), device=self.device)
        batches = order.to(self.device).split(batch_size)
        for number, ids in enumerate(batches, start=1):
            error = error + self.update(ids, alpha, beta)
            if momentum > 0 and (number == len(batches) if momentum_every == 0 else number % momentum_every == 0):
                self.momentum_step(momentum)
        return error / self.frames.sum().clamp_min(1e-30)

    def window_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Flat indices (B, k, M, M) of each position's window; windows wrap (the DFT is periodic)."""
        steps = torch.arange(self.frame, device=self.device)
        corners = self.corners[ids]
        rows = (corners[..., 0, None] + steps) % self.grid
        cols = (corners[..., 1, None] + steps) % self.grid
        return rows[..., :, None] * self.grid + cols[..., None, :]

    def update(self, ids: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        """One batched ePIE step over samples `ids`; returns the batch's summed squared amplitude error."""
        index = self.window_index(ids)
        discs = self.discs[ids]
        pupil = discs * self.probe if self.learn_probe else discs.to(torch.complex64)
        patch = self.spectrum.reshape(-1)[index]                               # (B, k, M, M)
        exit_wave = patch * pupil
        field = torch.fft.ifft2(exit_wave, norm="ortho")
        model = torch.view_as_real(field).square().sum(-1).mean(dim=1, keepdim=True)  # incoherent over k
        measured = self.frames[ids][:, None]
        ratio = torch.sqrt(measured / (model + self.eps))
        correction = torch.fft.fft2(field * ratio, norm="ortho") - exit_wave
        error = (measured.sqrt() - model.sqrt()).square().sum()
        if self.learn_probe:  # the probe step uses the object before this batch's object step
            self.probe_step(patch, discs, correction, beta)
        self.object_step(index, pupil, correction, alpha)
        self.constrain()
        return error

    def object_step(self, index: torch.Tensor, pupil: torch.Tensor, correction: torch.Tensor, alpha: float) -> None:
        flat = index.reshape(-1)
        numerator = torch.zeros_like(self.spectrum).reshape(-1)
        numerator.index_add_(0, flat, (pupil.conj() * correction).reshape(-1))
        coverage = torch.zeros(self.grid * self.grid, device=self.device)
        coverage.index_add_(0, flat, torch.view_as_real(pupil).square().sum(-1).reshape(-1))
        # summed coverage, floored a little so that pixels at a pupil's faint edge don't blow up
        step = numerator / (coverage + 1e-3 * coverage.amax())
        self.spectrum = self.spectrum + alpha * step.reshape(self.grid, self.grid)

    def probe_step(self, patch: torch.Tensor, discs: torch.Tensor, correction: torch.Tensor, beta: float) -> None:
        weight = discs * torch.view_as_real(patch).square().sum(-1)
        numerator = (discs * patch.conj() * correction).sum(dim=(0, 1))
        power = weight.sum(dim=(0, 1))
        step = numerator / (power + 1e-3 * power.amax())
        self.probe = (self.probe + beta * step) * self.probe_support

    def momentum_step(self, eta: float) -> None:
        """mPIE: carry on along the direction of the last interval's change."""
        self.velocity = eta * self.velocity + (self.spectrum - self.anchor)
        self.spectrum = self.spectrum + eta * self.velocity
        if self.learn_probe:
            self.probe_velocity = eta * self.probe_velocity + (self.probe - self.probe_anchor)
            self.probe = (self.probe + eta * self.probe_velocity) * self.probe_support
        self.constrain()
        self.anchor, self.probe_anchor = self.spectrum.clone(), self.probe.clone()

    def constrain(self) -> None:
        """Real-space projections: support window, then the value range."""
        if self.window_support is None and self.value_range == "none":
            return
        image = fw.to_image(self.spectrum)
        if self.window_support is not None:
            image = image * self.window_support
        if self.value_range == "real":
            image = image.real.clamp(0, 1).to(torch.complex64)
        elif self.value_range == "modulus":
            modulus = image.abs()
            image = image * (modulus.clamp(max=1) / modulus.clamp_min(1e-12))
        self.spectrum = fw.to_spectrum(image)


# ---------------------------------------------------------------- the trainer
def simulate_experiment(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """What both imaging trainers start from, set on `trainer`: ground truth (`truth_small`,
    `truth` on the grid), reconstruction `positions`, the union `coverage` and the band-limited
    `ceiling` SSIM. Returns the simulated measurements and the positions they were taken at."""
    config, device = trainer.config, trainer.device
    grid, diameter = config.image_size, config.sample_diameter
    trainer.obj_size = config.object_size_px()
    trainer.truth_small = load_object(config.image, trainer.obj_size)
    trainer.truth = fw.pad_to_grid(trainer.truth_small, grid).to(device)
    positions_meas = sample_positions(config, config.samples_per_line_meas)
    trainer.positions = sample_positions(config, config.samples_per_line_rec)
    images = fw.simulate(trainer.truth_small.to(device), positions_meas.to(device), diameter, grid,
                         config.snr, config.noise, config.noise_seed)
    trainer.coverage = sampling.coverage_mask(trainer.positions, diameter, grid)
    reference = sampling.band_limited_reference(trainer.truth_small, trainer.coverage).to(device)
    trainer.ceiling = image_metrics(reference, trainer.truth, trainer.obj_size)["ssim"]
    return images, positions_meas


class MopieTrainer(Trainer):
    """One iteration = one epoch of the engine; `lr` (= alpha) follows `schedule`."""

    algorithm = "mopie"
    config_class = MopieConfig
    config: MopieConfig

    def setup(self) -> None:
        config = self.config
        grid, diameter = config.image_size, config.sample_diameter
        images, _ = simulate_experiment(self)
        frame = config.frame_size or auto_frame_size(grid, diameter)
        self.engine = MopieEngine(to_frames(images, frame), self.positions, diameter, grid, self.obj_size,
                                  learn_probe=config.learn_probe, support=config.support,
                                  value_range=config.value_range)
        # start from the sample nearest DC: its amplitude is a low-passed object
        nearest = int(self.positions.mean(dim=1).norm(dim=1).argmin())
        self.engine.initialise(images[nearest].clamp_min(0).sqrt())
        del images
        # no gradients here: a placeholder optimiser carries alpha so the shared schedules drive it
        self.alpha_holder = torch.nn.Parameter(torch.zeros(()))
        self.optimizer = torch.optim.SGD([self.alpha_holder], lr=config.lr)
        self.scheduler = make_scheduler(self.optimizer, config.schedule, config.max_iterations,
                                        **config.schedule_kwargs)

    @property
    def alpha(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def epoch_order(self) -> torch.Tensor:
        """Sample ids of this epoch, seeded by (seed, epoch): the same order after a resume."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.iteration)
        return torch.randperm(self.engine.frames.shape[0], generator=generator)

    def step(self) -> dict[str, float]:
        config = self.config
        error = self.engine.epoch(self.epoch_order(), config.batch_size, self.alpha, config.beta,
                                  config.momentum, config.momentum_every)
        self.optimizer.step()  # a no-op (no gradient) that keeps the scheduler's call order valid
        return {"loss": float(error)}

    def evaluate(self) -> dict[str, float]:
        metrics = image_metrics(self.engine.reconstruction(), self.truth, self.obj_size)
        return {**metrics, "ceiling_ssim": self.ceiling, "alpha": self.alpha}

    # ----- state: the object is the "model", so best-state restore and resume both see it
    def model_state(self) -> dict[str, Any]:
        return {"spectrum": self.engine.spectrum.clone(), "probe": self.engine.probe.clone()}

    def load_model_state(self, state: dict[str, Any]) -> None:
        if state:
            self.engine.spectrum = state["spectrum"].to(self.device)
            self.engine.probe = state["probe"].to(self.device)

    def extra_state(self) -> dict[str, Any]:
        return {"engine": self.engine.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            self.engine.load(state["engine"])

    def final_metrics(self) -> dict[str, float]:
        best = image_metrics(self.engine.reconstruction(), self.truth, self.obj_size)
        return {f"final_{key}": value for key, value in best.items()}

    def save_figures(self) -> None:
        super().save_figures()
        if self.context.output_dir is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recon = fw.crop_to_object(self.engine.reconstruction().abs(), self.obj_size).cpu()
        truth = self.truth_small.cpu()
        figure, axes = plt.subplots(1, 2, figsize=(8, 4))
        for axis, image, title in ((axes[0], recon, "mopie reconstruction"), (axes[1], truth, "ground truth")):
            axis.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            axis.set_title(title)
            axis.axis("off")
        self.context.log_figure("reconstruction", figure, self.iteration)
        figure, axis = plt.subplots(figsize=(4, 4))
        axis.imshow(self.coverage.numpy(), cmap="gray")
        axis.set_title(f"coverage ({len(self.positions)} samples, ceiling SSIM {self.ceiling:.3f})")
        axis.axis("off")
        self.context.log_figure("coverage", figure, self.iteration)
