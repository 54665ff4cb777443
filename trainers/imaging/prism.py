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
from trainers.base import make_scheduler
from trainers.graphs import CapturedStep
from trainers.imaging import forward as fw
from trainers.imaging import metrics as im
from trainers.imaging import sampling
from trainers.imaging.common import ImagingTrainer, state_copy
from trainers.imaging.engine import MopieEngine
from trainers.imaging.frames import to_frames
from trainers.imaging.metrics import image_metrics
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
    """A loss over (B, M, M) frames with per-frame weights w (B,), written as a weighted sum over
    frames (`partial`) finished with a normaliser of all the targets, sum_j w_j per_frame(t_j):
    ranks that hold shares of the frames add their partial sums and get the loss of all of them
    (see `PrismTrainer._fit`). Called without weights, it is the plain loss."""

    partial: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    per_frame: Callable[[torch.Tensor], torch.Tensor]
    finish: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def normaliser(self, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        per = self.per_frame(target)
        return _floored((per if weights is None else per * weights).sum())

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        if weights is None:
            weights = torch.ones(len(target), device=target.device)
        return self.finish(self.partial(prediction, target, weights), self.normaliser(target, weights))


def _floored(value: torch.Tensor) -> torch.Tensor:
    return value.clamp_min(1e-30)


def _weighted(per_pixel: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (per_pixel.sum(dim=(-2, -1)) * weights).sum()


# relative L1: sum_j w_j sum |p_j - t_j| / sum_j w_j sum |t_j|
L1 = FrameLoss(lambda p, t, w: _weighted((p - t).abs(), w), lambda t: t.abs().sum(dim=(-2, -1)), torch.div)
# relative L2, ||p - t||_2 / ||t||_2: a norm ratio (not squared), so one loss_threshold suits l1 and l2
L2 = FrameLoss(lambda p, t, w: _weighted((p - t).square(), w), lambda t: t.square().sum(dim=(-2, -1)),
               lambda total, norm: (total / norm).sqrt())


def ssim_dissimilarity(prediction: torch.Tensor, target: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted sum over (B, M, M) frames of 1 - SSIM, each pair scaled by its measurement's maximum.

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
    per = (1 - ssim_map).mean(dim=(-2, -1))
    return per.sum() if weights is None else (per * weights).sum()


# 1 - the weighted mean SSIM over the frames
SSIM = FrameLoss(ssim_dissimilarity, lambda t: torch.ones(len(t), device=t.device), torch.div)
LOSSES = {"l1": L1, "l2": L2, "ssim": SSIM}


def frame_size(grid: int, diameter: float) -> int:
    """prism's frames: the smallest N/s (s an integer) >= 2d + 2, which hold every sample of the
    intensity. prism was tuned on these; other sizes are as exact but move its fits (default
    problem: SSIM 0.88 on 108 px frames, 0.90 on these 128 px)."""
    sizes = (grid // s for s in range(grid, 0, -1) if grid % s == 0)
    return next((size for size in sizes if size >= 2 * diameter + 2), grid)


# ---------------------------------------------------------------- the trainer
def validation_split(positions: torch.Tensor, diameter: float, grid: int,
                     fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(fitted ids, held-out ids) of the samples, both in pattern order.

    About `fraction` of the samples are held out, spread over the pattern (every 1/fraction-th),
    never the first (DC), and only a sample whose pupil the fitted ones still cover (>= 95% of
    its pixels): the held-out set then costs little of the spectrum's coverage, and the
    validation error asks whether the object predicts measurements it was never fitted to.
    Only positions are read: the split is the same for a simulation and for measured data."""
    count = len(positions)
    wanted = int(round(fraction * count))
    if wanted == 0 or count < 3:
        return torch.arange(count), torch.zeros(0, dtype=torch.long)
    masks = torch.stack([fw.pupil_masks(p, diameter, grid).amax(dim=0) > 0 for p in positions])
    stride = count / wanted
    first = [min(count - 1, max(1, int(stride * (k + 0.5)))) for k in range(wanted)]
    # then the neighbours (in pattern order) of those picks, nearest first
    near = [pick + sign * offset for offset in range(1, count) for pick in first for sign in (-1, 1)]
    candidates = list(dict.fromkeys(first + [s for s in near if 1 <= s < count]))
    held: list[int] = []
    for sample in candidates:
        if len(held) == wanted:
            break
        others = torch.ones(count, dtype=torch.bool)
        others[held + [sample]] = False
        union = masks[others].any(dim=0)
        if (union & masks[sample]).sum() >= 0.95 * masks[sample].sum():
            held.append(sample)
    held_out = torch.tensor(sorted(held), dtype=torch.long)
    keep = torch.ones(count, dtype=torch.bool)
    keep[held_out] = False
    return keep.nonzero().squeeze(1), held_out


class PrismTrainer(ImagingTrainer):
    """Selection by `val_loss`: the relative L1 error of the predicted intensities of the held-out
    apertures (`validation_fraction` of them, never fitted), or, with none held out, of all the
    fitted ones."""

    algorithm = "prism"
    config_class = PrismConfig
    config: PrismConfig

    def setup(self) -> None:
        config = self.config
        grid, diameter = config.image_size, config.sample_diameter
        experiment = self.load_experiment()
        images = experiment.images
        # the stored measurements, indexed by sample id, and the exact frame model of mopie
        self.engine = MopieEngine(to_frames(images, frame_size(grid, diameter), diameter), self.positions,
                                  diameter, grid, self.obj_size, support=False)
        self.train_ids, self.val_ids = validation_split(self.positions, diameter, grid, config.validation_fraction)
        self.init_target = self._init_target(images).to(self.device)
        experiment.images = None
        self.n_total = len(self.train_ids)
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
        self.sample_index = 0                       # next fitted sample to add (an index into train_ids)
        self.covered = torch.zeros(grid, grid, dtype=torch.bool)  # union of the pupils so far
        self.failed: list[int] = []                 # samples that ended above the threshold
        self.retry_queue: list[int] = []            # frozen copy of `failed` when the retries start
        self.recovered: list[int] = []              # retries kept: they lowered the validation error
        self.init_loss = float("nan")

    def _init_target(self, images: torch.Tensor) -> torch.Tensor:
        """An amplitude (N x N) to start from, from the fitted measurements only; amplitudes on
        both sides (one definition).

        The circle and the synthetic aperture carry no absolute scale (a mean of aperture images
        is far dimmer than the object), so both are scaled to the total power of the first (DC)
        image, which holds most of the object's energy: otherwise the first progressive fit
        spends its budget on the brightness and lands in a poor basin.
        """
        config = self.config
        first = images[self.train_ids[0]].clamp_min(0)
        if config.init_target == "mopie":
            return self._mopie_estimate(images)
        if config.init_target == "measurement":
            return first.sqrt()
        if config.init_target == "synthetic_aperture":
            shape = images[self.train_ids].clamp_min(0).mean(dim=0).sqrt()
        else:  # circle: a disc of obj_size
            shape = fw.pupil_masks(torch.zeros(2), self.obj_size, config.image_size).to(self.device)
        return shape * (first.sum() / shape.square().sum().clamp_min(1e-30)).sqrt()

    def _mopie_estimate(self, images: torch.Tensor) -> torch.Tensor:
        """|object| of `init_epochs` mopie epochs (its defaults: batches of 16, mPIE momentum, real
        [0, 1] object in its support window) on the FITTED apertures only, started, as mopie
        starts, from sqrt of the image nearest DC: a phase-retrieval estimate of the object from
        the data, which the held-out apertures never see (val_loss stays a test of prediction)."""
        from trainers.imaging.frames import auto_frame_size
        from trainers.imaging.mopie_config import MopieConfig

        config, defaults = self.config, MopieConfig()
        grid, diameter = config.image_size, config.sample_diameter
        ids = self.train_ids
        engine = MopieEngine(to_frames(images[ids], auto_frame_size(grid, diameter), diameter), self.positions[ids],
                             diameter, grid, self.obj_size, seed=config.seed)
        nearest = int(self.positions[ids].reshape(len(ids), -1, 2).mean(dim=1).norm(dim=1).argmin())
        engine.initialise(images[ids[nearest]].clamp_min(0).sqrt())
        generator = torch.Generator().manual_seed(config.seed)
        for _ in range(config.init_epochs):
            engine.epoch(torch.randperm(len(ids), generator=generator), defaults.batch_size, defaults.lr,
                         defaults.beta, defaults.momentum, defaults.momentum_every, defaults.constrain_every)
        return engine.reconstruction().real.clamp(0, 1)

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
        self._set_lr(config.init_lr or config.lr)
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

    def _choose_start(self) -> None:
        """`restarts` decoders (the first, then fresh seeded ones), each initialised and fitted to
        the first `restart_samples` fitted apertures in order; the one with the lowest val_loss is
        kept (decoder and optimiser), and the progressive phase starts from it at sample 0."""
        config = self.config
        best: tuple[float, Any] | None = None
        for restart in range(config.restarts):
            if restart:
                torch.manual_seed(config.seed * 7919 + restart)
                fresh = ProgressiveDecoder(self.obj_size, config.image_size, config.decoder_width,
                                           config.decoder_depth, config.output_activation)
                self.model.load_state_dict(fresh.state_dict())
                self.optimizer.state.clear()
                self._initialise()
            for count in range(1, min(config.restart_samples, self.n_total) + 1):
                self._fit(self.train_ids[:count], config.lr, config.loss)
            self.sample_index = min(config.restart_samples, self.n_total)  # what validation_error sees
            value = self.validation_error()
            self.sample_index = 0
            if best is None or value < best[0]:
                best = (value, state_copy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}))
        self.model.load_state_dict(best[1]["model"])
        self.optimizer.load_state_dict(best[1]["optimizer"])

    def _fit(self, ids: torch.Tensor, lr: float, loss_name: str,
             weights: torch.Tensor | None = None) -> dict[str, float]:
        """Fit the decoder to the measurements `ids` (frame weights `weights`, default equal); the
        convergence monitor decides when to stop."""
        config = self.config
        loss_fn = LOSSES[loss_name]
        if weights is None:
            weights = self.aperture_weights(ids, loss_fn)
        normaliser = loss_fn.normaliser(self.engine.frames[ids], weights)  # of all the apertures
        world = self.context.world_size
        share = collective.share(len(ids), self.context.rank, world)  # this rank's apertures
        ids, weights = ids[share], weights[share]
        index = self.engine.window_index(ids.to(self.device))
        discs = self.engine.discs[ids].to(torch.complex64)
        target = self.engine.frames[ids]

        def compute_loss() -> torch.Tensor:
            amplitude = self.amplitude()
            if len(ids):
                partial = loss_fn.partial(self.predict_frames(amplitude, index, discs), target, weights)
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
        # fit_lr: the step the fit ended at (an undone retry puts the optimiser's lr back)
        return {"loss": loss_value, "steps": float(step), "converged": float(converged),
                "escalated": float(escalated), "plateaued": float(plateaued), "fit_lr": self.current_lr()}

    def _plateaued(self, checks: list[float]) -> bool:
        window = self.config.plateau_checks
        if len(checks) <= window:
            return False
        before, recent = min(checks[:-window]), min(checks[-window:])
        return (before - recent) <= self.config.plateau_tol * before

    # ----- the data's verdicts
    @torch.no_grad()
    def frame_errors(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-aperture relative L1 errors sum |p - t| / sum t (len(ids),) of the current decoder."""
        if len(ids) == 0:
            return torch.zeros(0, device=self.device)
        prediction = self.predict_frames(self.amplitude(), self.engine.window_index(ids.to(self.device)),
                                         self.engine.discs[ids].to(torch.complex64))
        target = self.engine.frames[ids]
        return (prediction - target).abs().sum(dim=(-2, -1)) / target.sum(dim=(-2, -1)).clamp_min(1e-30)

    @torch.no_grad()
    def validation_error(self) -> float:
        """Relative L1 of the held-out apertures' intensities; with none held out, of the fitted
        apertures so far (a residual, then)."""
        ids = self.val_ids if len(self.val_ids) else self.train_ids[:max(1, self.sample_index)]
        if len(ids) == 0:
            return float("nan")
        prediction = self.predict_frames(self.amplitude(), self.engine.window_index(ids.to(self.device)),
                                         self.engine.discs[ids].to(torch.complex64))
        target = self.engine.frames[ids]
        return float((prediction - target).abs().sum() / target.sum().clamp_min(1e-30))

    def aperture_weights(self, ids: torch.Tensor, loss_fn: FrameLoss) -> torch.Tensor:
        """Frame weights of a fit: `energy` 1 each (a frame counts by its brightness), `equal`
        1 / its own normaliser (every aperture's relative error counts alike)."""
        if self.config.aperture_weights == "energy":
            return torch.ones(len(ids), device=self.device)
        per = loss_fn.per_frame(self.engine.frames[ids])
        return 1 / per.clamp_min(1e-30)

    def retry_weights(self, sample: int) -> torch.Tensor:
        """Frame weights of a retry of `sample` over every fitted aperture: equal, except that the
        failed aperture gets `retry_share` of the loss's normaliser (a dim, high-frequency
        aperture is otherwise a sliver of a sum dominated by the bright central ones)."""
        config = self.config
        loss_fn = LOSSES[config.retry_loss_name()]
        weights = self.aperture_weights(self.train_ids, loss_fn)
        per = loss_fn.per_frame(self.engine.frames[self.train_ids]) * weights
        position = int((self.train_ids == sample).nonzero()[0, 0])
        others = per.sum() - per[position]
        share = config.retry_share
        weights[position] *= max(1.0, float(share / (1 - share) * others / per[position].clamp_min(1e-30)))
        return weights

    # ----- one iteration
    def step(self) -> dict[str, float]:
        config = self.config
        if not self.initialised:
            self._initialise()
            if config.restarts > 1:
                self._choose_start()
        extra: dict[str, float] = {}
        if self.sample_index < self.n_total:
            sample = int(self.train_ids[self.sample_index])
            fit = self._fit(self.train_ids[:self.sample_index + 1], config.lr, config.loss)
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
            sample = self.retry_queue.pop(0)
            extra = self.retry(sample)
            self.finished = not self.retry_queue
            fit = extra.pop("fit")
            phase = 1.0
        return {**fit, **extra, "sample": float(sample), "retry": phase, "failed": float(len(self.failed)),
                "recovered": float(len(self.recovered)), "init_loss": self.init_loss}

    def retry(self, sample: int) -> dict[str, Any]:
        """Refit every fitted aperture from the current state with lr x retry_lr_factor, another
        loss and the failed aperture emphasised (`retry_weights`); kept only if the validation
        error falls, else the decoder and optimiser return to their state before the retry."""
        config = self.config
        position = (self.train_ids == sample).nonzero()[0]
        before_val = self.validation_error()
        before_own = float(self.frame_errors(self.train_ids[position])[0])
        snapshot = state_copy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()})
        fit = self._fit(self.train_ids, config.lr * config.retry_lr_factor, config.retry_loss_name(),
                        self.retry_weights(sample))
        after_val = self.validation_error()
        after_own = float(self.frame_errors(self.train_ids[position])[0])
        kept = after_val < before_val
        if kept:
            self.recovered.append(sample)
        else:
            self.model.load_state_dict(snapshot["model"])
            self.optimizer.load_state_dict(snapshot["optimizer"])
        return {"fit": fit, "retry_kept": float(kept), "retry_val_before": before_val,
                "retry_val_after": after_val, "retry_sample_error_before": before_own,
                "retry_sample_error_after": after_own}

    def _step_scheduler(self, metrics: dict[str, float]) -> None:
        """The schedule runs inside each sample's fit (see _fit), not once per iteration."""

    def reconstruction(self) -> torch.Tensor:
        with torch.no_grad():
            return self.amplitude()

    def evaluate(self) -> dict[str, float]:
        metrics = {"val_loss": self.validation_error(), "coverage": float(self.covered.float().mean()),
                   "held_out": float(len(self.val_ids))}
        metrics.update(self.test_metrics(self.reconstruction()))
        if self.experiment.truth is not None:
            so_far = sampling.band_limited_reference(self.experiment.truth_small, self.covered).to(self.device)
            metrics["coverage_ceiling_ssim"] = image_metrics(so_far, self.experiment.truth, self.obj_size)["ssim"]
        return metrics

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
        final = {"final_val_loss": self.validation_error(), "failed_samples": float(len(self.failed)),
                 "recovered_samples": float(len(self.recovered)), "held_out_samples": float(len(self.val_ids))}
        return {**final, **self.test_metrics(self.reconstruction(), prefix="final_test_")}

    def save_figures(self) -> None:
        super().save_figures()
        if self.context.output_dir is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recon = fw.crop_to_object(self.reconstruction(), self.obj_size).cpu()
        panels = [(recon, "prism reconstruction")]
        if self.experiment.truth_small is not None:
            panels.append((self.experiment.truth_small.cpu(), "ground truth"))
        figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
        for axis, (image, title) in zip(axes[0], panels):
            axis.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            axis.set_title(title)
            axis.axis("off")
        self.context.log_figure("reconstruction", figure, self.iteration)
        figure, axis = plt.subplots(figsize=(4, 4))
        axis.imshow(self.covered.numpy(), cmap="gray")
        axis.set_title(f"coverage ({self.sample_index}/{self.n_total} fitted, {len(self.val_ids)} held out, "
                       f"{len(self.failed)} failed)")
        axis.axis("off")
        self.context.log_figure("coverage", figure, self.iteration)
