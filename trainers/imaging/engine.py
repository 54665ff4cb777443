"""The batched ePIE / mPIE engine of `mopie` (also prism's frame model): state and update.

The unknown is the object's spectrum O. One iteration is one epoch over every sample, in
mini-batches of `batch_size` samples: fixed groups, drawn once (seeded), visited in a new seeded
random order every epoch (`BatchPlan`):

- camera grid: a field that passed a pupil of diameter d is band-limited to d, so each aperture
  position works on an M x M window of the spectrum around its centre (M = `frame_size`, auto
  the smallest fast FFT size >= d + 3): phi = ifft2(O_window * P) is the image field at the
  points x = n N/M (the window's offset only adds a phase ramp, which |.|^2 removes). The
  measurement is resampled once, at setup, to the same points (`to_frames`: exact for any M,
  since the intensity is band-limited to 2d). FFTs of M^2 instead of N^2 are where the speed
  comes from; `frame_size = image_size` gives full-grid FFTs;
- modulus replacement psi = phi * sqrt(I_m / (I_r + eps)), I_r the mean over a line's positions;
- object step O += alpha * sum conj(P) (Psi - Phi) / sum |P|^2: the corrections of a batch are
  added and divided, per spectrum pixel, by the batch's summed pupil coverage. A batch of one
  is exactly ePIE (|P| = 1); a big batch averages the corrections where apertures overlap
  instead of over-stepping, which is why mini-batches converge per epoch like sequential ePIE.
  A real object keeps only half of its (Hermitian) spectrum, so each step also updates the
  mirror pixels: see `MopieEngine`;
- optional probe step: a shared complex pupil (aberration) inside each aperture's known disc,
  P += beta * sum conj(O) disc (Psi - Phi) / sum |O|^2 disc;
- real-space constraints (support window, real [0, 1] or |.| <= 1; two N x N FFTs) every
  `constrain_every` batches, by default once at the end of the epoch: with the real-object
  steps above that converges as fast per epoch as constraining after every batch;
- mPIE momentum (Maiden et al. 2017) every `momentum_every` batches (default: once per epoch,
  before the constraints): v = eta v + (O - O_then), O += eta v; the first interval only sets
  O_then (its change, from the crude start, overshoots: SSIM 0.90 instead of 0.98 after one
  epoch). Every batch (`momentum_every=1`) costs two N x N passes per batch and gave a lower
  SSIM after one epoch on the default problem (0.963 vs 0.976), the same after 10 and 30.

Data-parallel over apertures (`world_size` > 1, one rank per GPU): every rank holds the whole
state and every measurement; in each batch a rank takes its contiguous share of the batch's
samples, scatters its corrections into a zeroed copy of the spectrum, and one all-reduce adds the
shares up (a learned probe sums its coverage and probe step the same way). The step scales use
the whole batch's coverage, so the update is the single-rank update up to the order of the
additions; momentum and constraints then run on every rank alike, and the states stay equal.

Measurements are indexed by sample id: a batch's arrays are regrouped together, never paired
by position in an epoch's order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainers import collective
from trainers.imaging import forward as fw

STATE_KEYS = ("native", "probe", "velocity", "probe_velocity", "anchor", "probe_anchor")


# ---------------------------------------------------------------- the engine
class MopieEngine:
    """Object/probe state and the batched update; plain torch, on the frames' device.

    Storage: the spectrum in FFT order (DC at [0, 0]) in a flat `buffer`, followed by M^2 scratch
    elements that are zero between updates. A window pixel outside its pupil disc points at the
    scratch element of its window position, so one gather gives the exit wave and one scatter
    drops whatever lies outside the disc (a binary pupil needs no multiplication); one scratch
    element per window position, because scatter-adds into one shared element serialise (the
    scatters took twice as long). With a binary pupil nothing of size N^2 is touched per batch.

    A real object (`value_range="real"`) has a Hermitian spectrum, O(-k) = conj(O(k)), so only
    the half kx in [0, N/2] is stored (`hermitian`): a window pixel on the other half reads and
    writes the conjugate of its mirror pixel. Every step is then a real-object step that also
    moves the mirror window (on the dense problem SSIM 0.96 after one epoch instead of 0.93),
    and the constraints' FFTs are real (rfft2 / irfft2: half the cost).
    """

    def __init__(self, frames: torch.Tensor, positions: torch.Tensor, diameter: float, grid: int,
                 obj_size: int, *, learn_probe: bool = False, support: bool = True,
                 value_range: str = "real", eps: float | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, graphs: bool = False):
        self.device, self.seed = frames.device, seed
        self.rank, self.world_size = rank, world_size
        self.batches: BatchPlan | None = None
        self.frames = frames.clamp_min(0)            # (n, M, M); Gaussian noise may go negative
        self.amplitudes = self.frames.sqrt()
        self.total = float(self.frames.sum()) or 1e-30    # normalises the epoch's error
        self.grid, self.frame = grid, frames.shape[-1]
        self.obj_size, self.learn_probe = obj_size, learn_probe
        self.value_range = value_range
        self.hermitian = value_range == "real"
        self.width = grid // 2 + 1 if self.hermitian else grid
        self.eps = eps if eps is not None else 1e-6 * float(self.frames.mean()) + 1e-30
        rounded = positions.round()
        self.rounded = rounded.long().to(self.device)
        self.discs = fw.pupil_masks(positions - rounded, diameter, self.frame).to(self.device)  # (n, k, M, M)
        self.index, self.conjugate = self._window_index(self.rounded, self.discs > 0)
        self.window_support = torch.fft.ifftshift(fw.pad_to_grid(torch.ones(obj_size, obj_size), grid)).to(
            self.device) if support else None
        self.probe_support = fw.pupil_masks(torch.zeros(2), diameter + 2, self.frame).to(self.device)
        self.size = grid * self.width                # where the scratch begins
        self.buffer = torch.zeros(self.size + self.frame**2, dtype=torch.complex64, device=self.device)
        self.coverage = torch.zeros(self.size + self.frame**2, device=self.device)
        # data-parallel: this rank's corrections, added up over the ranks before the step
        self.shares = torch.zeros_like(self.buffer) if world_size > 1 else None
        self.probe = torch.ones(self.frame, self.frame, dtype=torch.complex64, device=self.device)
        # the step size and the epoch's summed error live on the device: a replayed graph reads
        # and writes them there (a Python float would be frozen into the graph at capture)
        self.step_size = torch.ones((), device=self.device)
        self.epoch_error = torch.zeros((), device=self.device)
        self.graphs = EpochGraphs() if graphs and self.graphable() else None
        self.reset_momentum()

    def graphable(self) -> bool:
        """Whether an epoch can replay as CUDA graphs: on a GPU, one rank (no collectives in a
        graph), a fixed binary pupil (the learned probe's step reassigns the probe each batch)."""
        return self.device.type == "cuda" and self.world_size == 1 and not self.learn_probe

    def _window_index(self, rounded: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Buffer indices (n, k, M, M) of each position's window (the scratch outside its disc),
        and, when hermitian, -1 where a pixel stands for the conjugate of its mirror, else +1.
        Window pixel j holds frequency rounded - M//2 + j; windows wrap (the DFT is periodic)."""
        steps = torch.arange(self.frame, device=self.device) - self.frame // 2
        rows = ((rounded[..., 0, None] + steps) % self.grid)[..., :, None]
        cols = ((rounded[..., 1, None] + steps) % self.grid)[..., None, :]
        scratch = self.grid * self.width + torch.arange(self.frame**2, device=self.device).view(self.frame, self.frame)
        if not self.hermitian:
            return torch.where(inside, rows * self.grid + cols, scratch), None
        mirrored = cols > self.grid // 2
        rows = torch.where(mirrored, -rows % self.grid, rows)
        cols = torch.where(mirrored, -cols % self.grid, cols)
        index = torch.where(inside, rows * self.width + cols, scratch)
        return index, torch.where(mirrored, -1.0, 1.0).expand(inside.shape).contiguous()

    def window_index(self, ids: torch.Tensor) -> torch.Tensor:
        """For other users of this frame model (prism): flat indices (B, k, M, M) of the whole M x M
        windows of samples `ids` in a centred N x N spectrum, as `fw.to_spectrum` lays it out."""
        steps = torch.arange(self.frame, device=self.device) + self.grid // 2 - self.frame // 2
        corners = self.rounded[ids]
        rows = (corners[..., 0, None] + steps) % self.grid
        cols = (corners[..., 1, None] + steps) % self.grid
        return rows[..., :, None] * self.grid + cols[..., None, :]

    # ----- state
    @property
    def native(self) -> torch.Tensor:
        """The stored spectrum in FFT order: N x N, or N x (N/2 + 1) when hermitian (a view)."""
        return self.buffer[:self.size].view(self.grid, self.width)

    @property
    def spectrum(self) -> torch.Tensor:
        """The centred N x N spectrum O (a copy), as `fw.to_spectrum` defines it."""
        return fw.to_spectrum(self.reconstruction()) if self.hermitian else \
            torch.fft.fftshift(self.native, dim=(-2, -1))

    @spectrum.setter
    def spectrum(self, value: torch.Tensor) -> None:
        """Set from a centred spectrum (Hermitian when the object is real: its half is kept)."""
        self.native.copy_(torch.fft.ifftshift(value.to(self.device), dim=(-2, -1))[:, :self.width])

    def reset_momentum(self) -> None:
        self._forget_graphs()  # the tensors below are new: a graph would still point at the old ones
        self.velocity = torch.zeros_like(self.native)
        self.probe_velocity = torch.zeros_like(self.probe)
        self.anchor, self.probe_anchor = self.native.clone(), self.probe.clone()
        self.anchored = False

    def initialise(self, image: torch.Tensor) -> None:
        """Start from an amplitude image (N x N, e.g. sqrt of the DC measurement), constrained."""
        self.spectrum = fw.to_spectrum(image.to(self.device))
        self.constrain()
        self.reset_momentum()

    def state(self) -> dict[str, Any]:
        return {**{key: getattr(self, key).clone() for key in STATE_KEYS}, "anchored": self.anchored}

    def load(self, state: dict[str, Any]) -> None:
        self._forget_graphs()
        self.native.copy_(state["native"])
        for key in STATE_KEYS[1:]:  # copies: the steps work in place
            setattr(self, key, state[key].to(self.device, copy=True))
        self.anchored = bool(state["anchored"])

    def reconstruction(self) -> torch.Tensor:
        """The current object estimate (N x N, complex), centred."""
        if self.hermitian:
            image = torch.fft.irfft2(self.native, s=(self.grid, self.grid), norm="ortho").to(torch.complex64)
        else:
            image = torch.fft.ifft2(self.native, norm="ortho")
        return torch.fft.fftshift(image, dim=(-2, -1))

    # ----- one epoch
    def plan(self, batch_size: int) -> "BatchPlan":
        """The fixed mini-batches for `batch_size` (built once; the trainer builds it at setup)."""
        if self.batches is None or self.batches.batch_size != batch_size:
            self._forget_graphs()
            self.batches = BatchPlan.build(self, batch_size)
        return self.batches

    def set_probe(self, probe: torch.Tensor) -> None:
        """Replace the pupil (a restored state) in place, where a captured graph reads it."""
        self.probe.copy_(probe.to(self.device))

    def _forget_graphs(self) -> None:
        graphs = getattr(self, "graphs", None)
        if graphs is not None:
            graphs.clear()

    def epoch(self, order: torch.Tensor, batch_size: int, alpha: float, beta: float,
              momentum: float, momentum_every: int, constrain_every: int = 0) -> torch.Tensor:
        """Update over every batch, in the order in which `order` (sample ids) first names a member
        of each; returns the epoch's relative amplitude error (a tensor).

        mPIE momentum follows every `momentum_every` batches (0: the last only), the real-space
        constraints every `constrain_every` batches and always the epoch's last batch (after its
        momentum step): the epoch ends constrained.

        With graphs (`graphable`), each batch's update and each kind of step after a batch
        (momentum and/or constraints) is captured once as a CUDA graph and replayed, in the
        epoch's order: the same kernels as the eager loop, one launch each instead of a few dozen
        (the epoch is launch-bound at these frame sizes). The first epoch with momentum, whose
        momentum step only sets the anchor, and the first call of each piece run eagerly."""
        plan = self.plan(batch_size)
        self.step_size.fill_(alpha)
        self.epoch_error.zero_()
        batches = plan.visiting_order(order)
        graphs = self.graphs if self.graphs is not None and (momentum == 0 or self.anchored) else None
        for number, batch in enumerate(batches, start=1):
            last = number == len(batches)
            push = momentum > 0 and _due(number, momentum_every, last)
            constrain = last or _due(number, constrain_every, last)
            rows = self.own_rows(plan.rows[batch])
            run(graphs, ("update", batch_size, batch), lambda: self.update(rows, beta))
            if push or constrain:
                run(graphs, ("after", push, constrain, momentum), lambda: self.after_batch(push, constrain, momentum))
        return collective.sum_(self.epoch_error.clone(), self.world_size) / self.total

    def after_batch(self, push: bool, constrain: bool, momentum: float) -> None:
        """What follows a batch when due: the momentum step, the constraints, the new anchor."""
        if push:
            self.momentum_step(momentum)
        if constrain:
            self.constrain()
        if push:
            self.anchor.copy_(self.native)
            if self.learn_probe:  # a fixed pupil never moves: its anchor stays equal to it
                self.probe_anchor = self.probe.clone()

    @torch.no_grad()
    def residual(self) -> torch.Tensor:
        """sum |I_model - I_measured| / sum I_measured over every measured frame at the current
        state: the data's verdict on the object (a forward pass per batch, no update)."""
        plan = self.batches
        misfit = torch.zeros((), device=self.device)
        total = torch.zeros((), device=self.device)
        for rows in plan.rows:
            rows = self.own_rows(rows)
            if rows.stop <= rows.start:
                continue
            patch = self.buffer.index_select(0, plan.index[rows].flatten()).view(plan.index[rows].shape)
            if plan.signs is not None:
                torch.view_as_real(patch).mul_(plan.signs[rows])
            if self.learn_probe:
                patch = patch * (plan.discs[rows] * self.probe)
            field = torch.fft.ifft2(patch, norm="forward")                   # M phi
            model = (field.real.square() + field.imag.square()).mean(dim=1)  # M^2 I_r
            measured = plan.amplitudes[rows].square()                        # M^2 I_m
            misfit += (model - measured).abs().sum()
            total += measured.sum()
        misfit, total = collective.sum_(misfit, self.world_size), collective.sum_(total, self.world_size)
        return misfit / total.clamp_min(1e-30)

    def own_rows(self, rows: slice) -> slice:
        """This rank's contiguous share of a batch's rows (all of them on one rank)."""
        if self.world_size == 1:
            return rows
        part = collective.share(rows.stop - rows.start, self.rank, self.world_size)
        return slice(rows.start + part.start, rows.start + part.stop)

    def update(self, rows: slice, beta: float) -> None:
        """One batched ePIE step of size `step_size` over the samples in `rows` of the batch plan
        (contiguous slices: no gathers); adds the batch's summed squared amplitude error to
        `epoch_error`. No host syncs: it can be captured as a CUDA graph."""
        plan = self.batches
        index = plan.index[rows]                                              # (B, k, M, M)
        flat = index.flatten()
        patch = self.buffer.index_select(0, flat).view(index.shape)           # zero outside the disc
        if plan.signs is not None:                                            # conjugate the mirror pixels
            torch.view_as_real(patch).mul_(plan.signs[rows])
        pupil = plan.discs[rows] * self.probe if self.learn_probe else None
        exit_wave = patch if pupil is None else patch * pupil
        # unnormalised FFTs (a tenth faster than "ortho"): the field is M phi, so the plan holds
        # M sqrt(I_m), and the correction comes out M^2 times too large (folded into the steps)
        area = self.frame**2
        field = _batched_fft(exit_wave, inverse=True, norm="forward")
        model = field.real.square().addcmul_(field.imag, field.imag)          # M^2 |phi|^2
        positions = model.shape[1]
        if positions > 1:
            model = model.mean(dim=1, keepdim=True)                           # incoherent over a line
        # psi = phi sqrt(I_m / (I_r + eps)), in place on the model
        field *= model.add_(self.eps * area).rsqrt_().mul_(plan.amplitudes[rows][:, None])
        correction = _batched_fft(field, inverse=False, norm="backward").sub_(exit_wave, alpha=area)
        # sum |psi - phi|^2 (Parseval) = sum I_r (ratio - 1)^2: the squared amplitude error
        # sum (sqrt(I_m) - sqrt(I_r))^2 up to eps, k times over a line's k positions
        error = torch.linalg.vector_norm(torch.view_as_real(correction)).square() / (positions * area**2)
        self.epoch_error += error
        if pupil is None:  # 1 / (M^2 summed coverage) and the mirror signs, in one real multiply
            torch.view_as_real(correction).mul_(plan.steps[rows])
        else:  # the probe step uses the object before this batch's object step
            correction /= area
            self.probe_step(patch, plan.discs[rows], correction, beta)
            correction = correction * pupil.conj()
            correction *= self.coverage_scale(flat, (pupil.real.square() + pupil.imag.square()).flatten()).view(
                correction.shape)
            if plan.signs is not None:
                torch.view_as_real(correction).mul_(plan.signs[rows])
        correction *= self.step_size
        if self.shares is None:
            self.buffer.index_add_(0, flat, correction.flatten())
        else:  # the ranks' shares summed: one all-reduce of the spectrum per batch
            self.shares.zero_().index_add_(0, flat, correction.flatten())
            self.buffer[:self.size] += collective.sum_(self.shares[:self.size], self.world_size)
        self.buffer[self.size:] = 0

    def coverage_scale(self, flat: torch.Tensor, weight: torch.Tensor, shared: bool = True) -> torch.Tensor:
        """1 / the summed coverage sum |P|^2 of a batch at each of its window pixels `flat`: the
        object step's normalisation, floored a little so that pixels at a pupil's faint edge
        don't blow up (a binary pupil: a count, >= 1 wherever a step lands). `shared`: `flat` is
        this rank's share of the batch, so the coverage is summed over the ranks."""
        self.coverage.zero_().index_add_(0, flat, weight)
        self.coverage[self.size:] = 0  # the scratch is no pixel
        if shared:
            collective.sum_(self.coverage, self.world_size)  # the whole batch's coverage
        return self.coverage.add_(1e-3 * self.coverage.amax()).reciprocal_().index_select(0, flat)

    def probe_step(self, patch: torch.Tensor, discs: torch.Tensor, correction: torch.Tensor, beta: float) -> None:
        weight = discs * (patch.real.square() + patch.imag.square())
        numerator = collective.sum_((discs * patch.conj() * correction).sum(dim=(0, 1)), self.world_size)
        power = collective.sum_(weight.sum(dim=(0, 1)), self.world_size)
        step = numerator / (power + 1e-3 * power.amax())
        self.probe = (self.probe + beta * step) * self.probe_support

    def momentum_step(self, eta: float) -> None:
        """mPIE: carry on along the direction of the last interval's change. The first interval
        only sets the anchor: its change, away from the crude initial guess, overshoots."""
        if not self.anchored:
            self.anchored = True
            return
        self.velocity.mul_(eta).add_(self.native).sub_(self.anchor)
        self.native.add_(self.velocity, alpha=eta)
        if self.learn_probe:
            self.probe_velocity = eta * self.probe_velocity + (self.probe - self.probe_anchor)
            self.probe = (self.probe + eta * self.probe_velocity) * self.probe_support

    def constrain(self) -> None:
        """Real-space projections: the value range, then the support window (two N x N FFTs)."""
        if self.hermitian:
            image = torch.fft.irfft2(self.native, s=(self.grid, self.grid), norm="ortho").clamp_(0, 1)
            if self.window_support is not None:
                image *= self.window_support
            self.native.copy_(torch.fft.rfft2(image, norm="ortho"))
            return
        if self.window_support is None and self.value_range == "none":
            return
        image = torch.fft.ifft2(self.native, norm="ortho")
        if self.value_range == "modulus":
            modulus = image.abs()
            image *= modulus.clamp(max=1) / modulus.clamp_min(1e-12)
        if self.window_support is not None:
            image *= self.window_support
        self.native.copy_(torch.fft.fft2(image, norm="ortho"))


@dataclass
class BatchPlan:
    """Fixed mini-batches: the samples regrouped, once and seeded, so that each batch is a
    contiguous slice (`rows`) of per-sample arrays held in that order, with its summed coverage
    precomputed for a binary pupil. Every epoch visits the batches in a new order. Against
    batches redrawn every epoch this saves a gather of each array and the coverage scatter
    per batch (a sixth of an epoch's time) and converged the same (default and dense problems,
    1 to 10 epochs). Each sample keeps its own measurement: the arrays move together."""

    batch_size: int
    ids: torch.Tensor                  # (n,) the sample id held at each row
    batch_of: torch.Tensor             # (n,) the batch of each sample id
    rows: list[slice]                  # the rows of each batch
    index: torch.Tensor                # the engine's per-sample arrays, in row order
    amplitudes: torch.Tensor           # M sqrt(I_m)
    discs: torch.Tensor
    # multipliers of a complex array seen as (..., 2) reals (one fast multiply, where a complex
    # times a real and a strided multiply of the imaginary parts took 5x longer):
    signs: torch.Tensor | None         # (1, +-1): conjugates the mirror pixels (hermitian), else None
    steps: torch.Tensor | None         # signs / (M^2 the batch's summed coverage) (binary pupil), else None

    @classmethod
    def build(cls, engine: MopieEngine, batch_size: int) -> "BatchPlan":
        count = engine.index.shape[0]
        generator = torch.Generator().manual_seed(engine.seed)
        ids = torch.randperm(count, generator=generator).to(engine.device)
        rows = [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
        # on the host: the visiting order is a host-side loop (no device sync per epoch)
        batch_of = torch.empty(count, dtype=torch.long)
        batch_of[ids.cpu()] = torch.arange(count) // batch_size
        index = engine.index[ids].int()  # int32: the gathers and scatters take it, at half the traffic
        signs = None
        if engine.conjugate is not None:
            signs = torch.stack([torch.ones_like(engine.conjugate[ids]), engine.conjugate[ids]], dim=-1)
        steps = None
        area = engine.frame**2  # `update` uses unnormalised FFTs: its field is M times phi
        if not engine.learn_probe:
            scale = torch.cat([engine.coverage_scale(flat, torch.ones_like(flat, dtype=torch.float32), shared=False)
                               for flat in (index[r].flatten() for r in rows)]).view(*index.shape, 1) / area
            steps = scale * (signs if signs is not None else torch.ones(2, device=engine.device))
        amplitudes = engine.amplitudes[ids] * engine.frame
        return cls(batch_size, ids, batch_of, rows, index, amplitudes, engine.discs[ids], signs, steps)

    def visiting_order(self, order: torch.Tensor) -> list[int]:
        """Batches in the order in which `order` (sample ids) first names one of their members."""
        return list(dict.fromkeys(self.batch_of[order.cpu()].tolist()))


def _batched_fft(batch: torch.Tensor, inverse: bool, norm: str) -> torch.Tensor:
    """2-D FFTs of a batch that may be empty: a rank's share of a batch with fewer samples than
    ranks (cuFFT and MKL refuse an empty transform; the rank still joins the batch's sums)."""
    if batch.numel() == 0:
        return batch.clone()
    return (torch.fft.ifft2 if inverse else torch.fft.fft2)(batch, norm=norm)


class EpochGraphs(dict):
    """CUDA graphs of the pieces of an epoch, by key. A piece runs eagerly the first time (that
    also sets up cuFFT's plans and the allocator before any capture), is captured the second time
    and replayed from then on. Each graph has its own memory pool: the pieces replay in a
    different order every epoch, and one pool is safe only for graphs replayed in capture order.
    Everything a piece reads or writes across calls is a persistent tensor of the engine,
    updated in place (a piece must not rebind one: `MopieEngine._forget_graphs`)."""

    def __init__(self):
        super().__init__()
        self.seen: set = set()

    def clear(self) -> None:
        super().clear()
        self.seen.clear()


def run(graphs: EpochGraphs | None, key: Any, piece) -> None:
    """`piece()` eagerly, or replayed from its CUDA graph in `graphs` (see EpochGraphs)."""
    if graphs is None:
        piece()
        return
    graph = graphs.get(key)
    if graph is None:
        if key not in graphs.seen:
            graphs.seen.add(key)
            piece()
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            piece()
        graphs[key] = graph
    graph.replay()


def _due(number: int, every: int, last: bool) -> bool:
    """Whether batch `number` ends an interval of `every` batches (0: the epoch's last batch)."""
    return number % every == 0 if every > 0 else last
