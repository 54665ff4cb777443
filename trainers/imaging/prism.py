"""`prism`: progressive synthetic-aperture reconstruction with an untrained deep decoder.

The unknown object is the output of a small generator (`ProgressiveDecoder`) from one learned
latent: the network's structure is the image prior (deep image prior / deep decoder family).

- Initialisation (inside the first iteration): fit the decoder's amplitude to a rough target
  (`init_target`: a disc, sqrt of the first (DC) image, or sqrt of the mean of all noiseless
  images) with relative L1, until below `init_threshold` or `init_steps` steps.
- ONE ITERATION = ONE NEW SAMPLE, in pattern order (centre first, growing outwards). The decoder
  is fitted to the stored measurements of ALL apertures so far, not to old apertures as seen
  through its own previous reconstruction (and so froze early errors in).
  The measurement model is the mopie frame model, batched: one full FFT of the decoder output,
  then every aperture's M x M spectrum window in one gather and one batched inverse FFT
  (`MopieEngine` supplies the frames, windows and discs; the frames are exact).
- Data-parallel over apertures (`world_size` > 1): each rank predicts its share of the
  apertures; the losses are sums over frames (`FrameLoss`), so one all-reduce of the partial
  sum gives every rank the loss of all apertures (its checks agree), and the decoder's
  gradients are summed by one all-reduce per step. The decoder itself runs on every rank.
- On one GPU (`cuda_graphs`, the default), each fit's forward + loss + backward is captured once
  as a CUDA graph and replayed (trainers/graphs.py): the step is launch-bound, and replaying
  it is one launch; the optimiser step stays eager, so the trajectory is the eager loop's.
- Convergence monitor, every `check_every` steps (the only host syncs of the inner loop):
  early exit after `converge_checks` checks under `loss_threshold`; plateau detection
  (relative gain < `plateau_tol` over `plateau_checks` checks); ONE escalation per sample
  (lr x `escalation_factor`, optionally cosine warm restarts) on a plateau or at the end of the
  first cycle; a sample that ends above the threshold (budget or plateau after escalating) is
  recorded as failed.
- Retry: the iterations after the last sample each retry one failed sample (in the order they
  failed) with lr x `retry_lr_factor` and a different loss, fitting all apertures. The original
  had this code and never called it. `final_metrics` reports how many were recovered.
- The `schedule` key is the per-sample inner schedule (the spec's `create_scheduler`), built
  with `trainers.base.make_scheduler` with the spec's defaults and restarted at every sample;
  the base loop's per-iteration schedule step is therefore switched off.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainers import collective
from trainers.base import Trainer, make_scheduler
from trainers.graphs import CapturedStep
from trainers.imaging import forward as fw
from trainers.imaging import metrics as im
from trainers.imaging import sampling
from trainers.imaging.metrics import image_metrics
from trainers.imaging.mopie import MopieEngine, simulate_experiment, to_frames
from trainers.imaging.prism_config import PrismConfig
from trainers.precision import autocast, uses_amp

# spec defaults of create_scheduler, overridable through schedule_kwargs
SCHEDULE_DEFAULTS = {
    "plateau": {"factor": 0.5},  # patience is set in checks below (10 steps in the spec)
    "cosine_warm_restarts": {"T_0": 50, "T_mult": 2, "eta_min": 1e-6},
}


# ---------------------------------------------------------------- the generator
class ProgressiveDecoder(nn.Module):
    """Latent [1, C, 1, 1] -> 4x4 -> stride-2 blocks doubling the size -> 3x3 convs to 1 channel.

    The output is cropped (centre) to obj_size and zero-padded to the N x N grid exactly where
    the forward model expects the object, so the support constraint is built in.
    """

    def __init__(self, obj_size: int, grid: int, width: int = 32, depth: int = 2,
                 output_activation: str = "sigmoid"):
        super().__init__()
        self.obj_size, self.grid, self.output_activation = obj_size, grid, output_activation
        self.latent = nn.Parameter(torch.randn(1, width, 1, 1))
        layers: list[nn.Module] = [nn.ConvTranspose2d(width, width, 4), nn.BatchNorm2d(width), nn.ReLU()]
        size = 4
        while size < obj_size:
            layers += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            size *= 2
        channels = width
        for number in range(depth):
            last = number == depth - 1
            out = 1 if last else max(1, channels // 2)
            layers.append(nn.Conv2d(channels, out, 3, padding=1))
            if not last:
                layers += [nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.body = nn.Sequential(*layers)
        self.out_size = size

    def forward(self) -> torch.Tensor:
        """The object amplitude on the full grid, (N, N) float32."""
        image = self.body(self.latent)[0, 0]
        start = (self.out_size - self.obj_size) // 2
        image = image[start:start + self.obj_size, start:start + self.obj_size].float()
        if self.output_activation == "sigmoid":
            image = torch.sigmoid(image)
        return fw.pad_to_grid(image, self.grid)


# ---------------------------------------------------------------- losses
def relative_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum |p - t| / sum |t|: the error relative to predicting zeros."""
    return (prediction - target).abs().sum() / target.abs().sum().clamp_min(1e-30)


@dataclass(frozen=True)
class FrameLoss:
    """A loss over (B, M, M) frames written as a sum over frames (`partial`), finished with a
    normaliser of all the targets: ranks that hold shares of the frames add their partial sums
    and get the loss of all of them (see `PrismTrainer._fit`). Called, it is the plain loss."""

    partial: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    normaliser: Callable[[torch.Tensor], torch.Tensor]
    finish: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.finish(self.partial(prediction, target), self.normaliser(target))


def _floored(value: torch.Tensor) -> torch.Tensor:
    return value.clamp_min(1e-30)


# relative L1: sum |p - t| / sum |t|
L1 = FrameLoss(lambda p, t: (p - t).abs().sum(), lambda t: _floored(t.abs().sum()), torch.div)
# relative L2, ||p - t||_2 / ||t||_2: a norm ratio (not squared), so one loss_threshold suits l1 and l2
L2 = FrameLoss(lambda p, t: (p - t).square().sum(), lambda t: _floored(t.square().sum()),
               lambda total, norm: (total / norm).sqrt())


def ssim_dissimilarity(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over (B, M, M) frames of 1 - SSIM, each pair scaled by its measurement's maximum.

    The same window and constants as metrics.ssim, but differentiable and in float32
    (metrics.ssim detaches and works in float64 for its skimage match).
    """
    scale = target.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    x, y = (prediction / scale)[:, None], (target / scale)[:, None]
    g = im._gaussian_window(x.dtype, x.device)
    moments = im._filter(torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(-1, 1, *x.shape[-2:]), g)
    ux, uy, uxx, uyy, uxy = moments.reshape(x.shape[0], 5, *moments.shape[-2:]).unbind(dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = im.K1 ** 2, im.K2 ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return (1 - ssim_map).mean(dim=(-2, -1)).sum()


# 1 - mean SSIM over the frames
SSIM = FrameLoss(ssim_dissimilarity, lambda t: torch.tensor(float(len(t)), device=t.device), torch.div)
LOSSES = {"l1": L1, "l2": L2, "ssim": SSIM}


def frame_size(grid: int, diameter: float) -> int:
    """prism's frames: the smallest N/s (s an integer) >= 2d + 2, which hold every sample of the
    intensity. prism was tuned on these; other sizes are as exact but move its fits (default
    problem: SSIM 0.88 on 108 px frames, 0.90 on these 128 px)."""
    sizes = (grid // s for s in range(grid, 0, -1) if grid % s == 0)
    return next((size for size in sizes if size >= 2 * diameter + 2), grid)


# ---------------------------------------------------------------- the trainer
class PrismTrainer(Trainer):
    algorithm = "prism"
    config_class = PrismConfig
    config: PrismConfig

    def setup(self) -> None:
        config = self.config
        grid, diameter = config.image_size, config.sample_diameter
        images, positions_meas = simulate_experiment(self)
        # the stored measurements, indexed by sample id, and the exact frame model of mopie
        self.engine = MopieEngine(to_frames(images, frame_size(grid, diameter), diameter), self.positions,
                                  diameter, grid, self.obj_size, support=False)
        self.init_target = self._init_target(images, positions_meas).to(self.device)
        del images
        self.n_total = len(self.positions)
        self.model = ProgressiveDecoder(self.obj_size, grid, config.decoder_width, config.decoder_depth,
                                        config.output_activation).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = None  # the inner, per-sample schedule is built in _fit
        self.use_amp = uses_amp(config.mixed_precision, self.device)
        if self.device.type == "cuda":  # fixed shapes: let cuDNN time its algorithms once (4.9 -> 4.6 ms/step)
            torch.backends.cudnn.benchmark = True
        # the compiled decoder shares the parameters; states are saved from the plain one
        # (mode reduce-overhead, CUDA graphs of the decoder: the default mode measured 10 ms per step)
        self.decoder = torch.compile(self.model, mode="reduce-overhead") if config.compile else self.model
        # our own graph of the whole step: one process (no collectives in a graph), not with compile's
        self.graphed = (config.cuda_graphs and self.device.type == "cuda" and self.context.world_size == 1
                        and not config.compile)
        # progress, all of it in extra_state
        self.initialised = False
        self.sample_index = 0                       # next sample to add
        self.covered = torch.zeros(grid, grid, dtype=torch.bool)  # union of the pupils so far
        self.failed: list[int] = []                 # samples that ended above the threshold
        self.retry_queue: list[int] = []            # frozen copy of `failed` when the retries start
        self.recovered: list[int] = []
        self.init_loss = float("nan")

    def _init_target(self, images: torch.Tensor, positions_meas: torch.Tensor) -> torch.Tensor:
        """An amplitude (N x N) to start from; amplitudes on both sides (one definition).

        The circle and the synthetic aperture carry no absolute scale (a mean of aperture images
        is far dimmer than the object), so both are scaled to the total power of the first (DC)
        image, which holds most of the object's energy: otherwise the first progressive fit
        spends its budget on the brightness and lands in a poor basin.
        """
        config = self.config
        first = images[0].clamp_min(0)
        if config.init_target == "measurement":
            return first.sqrt()
        if config.init_target == "synthetic_aperture":
            clean = fw.measure(fw.to_spectrum(self.truth), positions_meas.to(self.device), config.sample_diameter)
            shape = clean.mean(dim=0).sqrt()
        else:  # circle: a disc of obj_size
            shape = fw.pupil_masks(torch.zeros(2), self.obj_size, config.image_size).to(self.device)
        return shape * (first.sum() / shape.square().sum().clamp_min(1e-30)).sqrt()

    # ----- the measurement model
    def amplitude(self) -> torch.Tensor:
        with autocast(self.use_amp, cache=not self.graphed):
            return self.decoder().float()  # FFTs and losses stay in float32

    def predict_frames(self, amplitude: torch.Tensor, index: torch.Tensor, discs: torch.Tensor) -> torch.Tensor:
        """Model intensities (B, M, M) of the apertures whose windows/discs are given, in one batch."""
        spectrum = fw.to_spectrum(amplitude)
        # a gather of (re, im) pairs, not spectrum.reshape(-1)[index]: its backward is a plain
        # scatter-add, which a CUDA graph can capture (indexing's backward, index_put_ with
        # accumulate, sorts and cannot be captured)
        pairs = torch.view_as_real(spectrum).reshape(-1, 2)
        picked = pairs.gather(0, index.reshape(-1, 1).expand(-1, 2)).reshape(*index.shape, 2)
        patch = torch.view_as_complex(picked) * discs                   # (B, k, M, M)
        field = torch.fft.ifft2(patch, norm="ortho")
        return torch.view_as_real(field).square().sum(-1).mean(dim=1)   # incoherent mean over k

    # ----- the fits
    def _set_lr(self, lr: float) -> None:
        # initial_lr too: a scheduler built later reads its base lr from there
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = lr

    def _make_schedule(self, name: str):
        config = self.config
        kwargs = dict(SCHEDULE_DEFAULTS.get(name, {}))
        if name == "plateau":
            kwargs["patience"] = max(1, 10 // config.check_every)  # stepped once per check
        kwargs.update(config.schedule_kwargs)
        return make_scheduler(self.optimizer, name, config.steps_per_sample, **kwargs)

    def _step_taker(self, compute_loss: Callable[[], torch.Tensor],
                    split: bool = True) -> Callable[[], torch.Tensor]:
        """One optimiser step on compute_loss() per call, returning the loss: replayed as a CUDA
        graph when `self.graphed`, else eager. `split`: each rank's loss holds its share of the
        apertures, so the gradients are summed over the ranks (the initial fit is not split)."""
        if self.graphed:
            return CapturedStep(compute_loss, self.optimizer)

        def eager_step() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss = compute_loss()
            loss.backward()
            if split:
                collective.sum_gradients(self.model.parameters(), self.context.world_size)
            self.optimizer.step()
            return loss
        return eager_step

    def _initialise(self) -> None:
        """Fit the amplitude to the init target (relative L1) until init_threshold or init_steps."""
        config = self.config
        self._set_lr(config.lr)
        loss_value = float("nan")
        take_step = self._step_taker(lambda: relative_l1(self.amplitude(), self.init_target), split=False)
        for step in range(1, config.init_steps + 1):
            loss = take_step()
            if step % config.check_every == 0 or step == config.init_steps:
                loss_value = float(loss.detach())
                if loss_value < config.init_threshold:
                    break
        self.init_loss = loss_value
        self.initialised = True

    def _fit(self, ids: torch.Tensor, lr: float, loss_name: str) -> dict[str, float]:
        """Fit the decoder to the measurements `ids`; the convergence monitor decides when to stop."""
        config = self.config
        loss_fn = LOSSES[loss_name]
        normaliser = loss_fn.normaliser(self.engine.frames[ids])  # of all the apertures
        world = self.context.world_size
        ids = ids[collective.share(len(ids), self.context.rank, world)]  # this rank's apertures
        index = self.engine.window_index(ids.to(self.device))
        discs = self.engine.discs[ids].to(torch.complex64)
        target = self.engine.frames[ids]

        def compute_loss() -> torch.Tensor:
            amplitude = self.amplitude()
            if len(ids):
                partial = loss_fn.partial(self.predict_frames(amplitude, index, discs), target)
            else:  # fewer apertures than ranks so far: this rank adds nothing (FFTs of none fail)
                partial = 0 * amplitude.sum()
            # every rank: the loss of all apertures, the gradient through its own (summed after)
            return loss_fn.finish(collective.global_sum(partial, world), normaliser)

        take_step = self._step_taker(compute_loss)
        self._set_lr(lr)
        schedule = self._make_schedule(config.schedule)
        plateau_schedule = isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau)
        budget = config.steps_per_sample * config.max_cycles
        checks: list[float] = []
        under, escalated, plateaued, converged = 0, False, False, False
        step = 0
        loss_value = float("inf")
        for step in range(1, budget + 1):
            loss = take_step()
            if schedule is not None and not plateau_schedule:
                schedule.step()
            if step % config.check_every and step != budget:
                continue
            # ---- a convergence check: the one host sync per check_every steps
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                break
            if plateau_schedule:
                schedule.step(loss_value)
            checks.append(loss_value)
            under = under + 1 if loss_value < config.loss_threshold else 0
            if under >= config.converge_checks:
                converged = True
                break
            plateaued = self._plateaued(checks)
            end_of_cycle = step % config.steps_per_sample == 0
            if (plateaued or end_of_cycle) and not escalated and step < budget:
                if config.escalation == "none":
                    if plateaued:
                        break  # nothing left to try: stop spending steps on it
                    continue
                escalated = True
                self._set_lr(self.current_lr() * config.escalation_factor)
                if config.escalation == "warm_restarts":
                    schedule = self._make_schedule("cosine_warm_restarts")
                    plateau_schedule = False
                checks.clear()  # judge the plateau afresh after the change
            elif plateaued and escalated:
                break
        # a sample also counts as converged if its last check was under the threshold
        converged = converged or loss_value < config.loss_threshold
        return {"loss": loss_value, "steps": float(step), "converged": float(converged),
                "escalated": float(escalated), "plateaued": float(plateaued)}

    def _plateaued(self, checks: list[float]) -> bool:
        window = self.config.plateau_checks
        if len(checks) <= window:
            return False
        before, recent = min(checks[:-window]), min(checks[-window:])
        return (before - recent) <= self.config.plateau_tol * before

    # ----- one iteration
    def step(self) -> dict[str, float]:
        config = self.config
        if not self.initialised:
            self._initialise()
        if self.sample_index < self.n_total:
            sample = self.sample_index
            fit = self._fit(torch.arange(sample + 1), config.lr, config.loss)
            if not fit["converged"]:
                self.failed.append(sample)
            self.covered |= fw.pupil_masks(self.positions[sample], config.sample_diameter,
                                           config.image_size).amax(dim=0).bool()
            self.sample_index += 1
            if self.sample_index == self.n_total:
                self.retry_queue = list(self.failed) if config.retry else []
                self.finished = not self.retry_queue
            phase = 0.0
        else:
            # retry phase: one failed sample per iteration, all apertures, lower lr, other loss
            sample = self.retry_queue.pop(0)
            fit = self._fit(torch.arange(self.n_total), config.lr * config.retry_lr_factor,
                            config.retry_loss_name())
            if fit["converged"]:
                self.recovered.append(sample)
            self.finished = not self.retry_queue
            phase = 1.0
        return {**fit, "sample": float(sample), "retry": phase, "failed": float(len(self.failed)),
                "recovered": float(len(self.recovered)), "init_loss": self.init_loss}

    def _step_scheduler(self, metrics: dict[str, float]) -> None:
        """The schedule runs inside each sample's fit (see _fit), not once per iteration."""

    def reconstruction(self) -> torch.Tensor:
        with torch.no_grad():
            return self.amplitude()

    def evaluate(self) -> dict[str, float]:
        metrics = image_metrics(self.reconstruction(), self.truth, self.obj_size)
        so_far = sampling.band_limited_reference(self.truth_small, self.covered).to(self.device)
        return {**metrics, "ceiling_ssim": self.ceiling,
                "coverage_ceiling_ssim": image_metrics(so_far, self.truth, self.obj_size)["ssim"],
                "coverage": float(self.covered.float().mean())}

    # ----- state
    def extra_state(self) -> dict[str, Any]:
        return {"initialised": self.initialised, "sample_index": self.sample_index,
                "covered": self.covered.clone(), "failed": list(self.failed),
                "retry_queue": list(self.retry_queue), "recovered": list(self.recovered),
                "init_loss": self.init_loss}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.initialised, self.sample_index = bool(state["initialised"]), int(state["sample_index"])
        self.covered = state["covered"].clone()
        self.failed, self.retry_queue = list(state["failed"]), list(state["retry_queue"])
        self.recovered, self.init_loss = list(state["recovered"]), float(state["init_loss"])

    def final_metrics(self) -> dict[str, float]:
        best = image_metrics(self.reconstruction(), self.truth, self.obj_size)
        return {**{f"final_{key}": value for key, value in best.items()},
                "final_ceiling_ssim": self.ceiling, "failed_samples": float(len(self.failed)),
                "recovered_samples": float(len(self.recovered))}

    def save_figures(self) -> None:
        super().save_figures()
        if self.context.output_dir is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recon = fw.crop_to_object(self.reconstruction(), self.obj_size).cpu()
        figure, axes = plt.subplots(1, 2, figsize=(8, 4))
        for axis, image, title in ((axes[0], recon, "prism reconstruction"), (axes[1], self.truth_small, "ground truth")):
            axis.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            axis.set_title(title)
            axis.axis("off")
        self.context.log_figure("reconstruction", figure, self.iteration)
        figure, axis = plt.subplots(figsize=(4, 4))
        axis.imshow(self.covered.numpy(), cmap="gray")
        axis.set_title(f"coverage ({self.sample_index}/{self.n_total} samples, {len(self.failed)} failed)")
        axis.axis("off")
        self.context.log_figure("coverage", figure, self.iteration)
