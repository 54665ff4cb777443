"""`mopie`: batched ePIE / mPIE reconstruction with a known pupil (the engine is engine.py).

One iteration is one epoch of `MopieEngine` over every sample; `lr` (= alpha) follows the
shared `schedule`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from trainers.imaging import forward as fw
from trainers.imaging.engine import MopieEngine
from trainers.imaging.common import ImagingTrainer
from trainers.imaging.experiment import Experiment
from trainers.imaging.frames import auto_frame_size, to_frames
from trainers.imaging.mopie_config import MopieConfig


@dataclass
class MopieData:
    """What a mopie run starts from: the experiment without its full-grid images (the engine
    reads only the frames cut from them), the frames, and the starting amplitude."""

    experiment: Experiment
    frames: torch.Tensor      # (n, M, M) measured intensities around each pupil
    start: torch.Tensor       # N x N amplitude of the sample nearest DC (a low-passed object)


class MopieTrainer(ImagingTrainer):
    """One iteration = one epoch of the engine; `lr` (= alpha) follows `schedule`.

    The selection metric is `residual`, the relative L1 misfit of every measured intensity
    (sum |I_model - I_measured| / sum I_measured) at the end of the epoch: what a scientist has.
    Nothing is held out: every measurement is fitted, and none is spent on validation."""

    algorithm = "mopie"
    config_class = MopieConfig
    config: MopieConfig
    # the frames depend on the frame size, which learn_probe changes when frame_size is auto
    shared_data_keys = ImagingTrainer.shared_data_keys + ("frame_size", "learn_probe")

    @classmethod
    def build_shared_data(cls, config: MopieConfig) -> MopieData:
        experiment = super().build_shared_data(config)
        grid, diameter = config.image_size, config.sample_diameter
        frame = config.frame_size or auto_frame_size(grid, diameter, full_band=config.learn_probe)
        # start from the sample nearest DC: its amplitude is a low-passed object
        nearest = int(experiment.positions.mean(dim=1).norm(dim=1).argmin())
        # the full-grid images are not needed once the frames are cut: not kept, not shared
        return MopieData(replace(experiment, images=None), to_frames(experiment.images, frame, diameter),
                         experiment.images[nearest].clamp_min(0).sqrt())

    def setup(self) -> None:
        config = self.config
        grid, diameter = config.image_size, config.sample_diameter
        data = self.shared_data()
        self.load_experiment(data.experiment)
        self.engine = MopieEngine(data.frames.to(self.device), self.positions, diameter, grid, self.obj_size,
                                  learn_probe=config.learn_probe, support=config.support,
                                  value_range=config.value_range, seed=config.seed,
                                  rank=self.context.rank, world_size=self.context.world_size,
                                  graphs=config.cuda_graphs)
        self.engine.plan(config.batch_size)
        self.engine.initialise(data.start.to(self.device))
        self.initial_guess = self.engine.reconstruction()  # what a comparison starts other engines from
        # no gradients here: alpha is a step size the shared schedules drive (no torch optimiser)
        self.schedule_step_size(config.lr)

    @property
    def alpha(self) -> float:
        return self.current_lr()

    def epoch_order(self) -> torch.Tensor:
        """Sample ids of this epoch, seeded by (seed, epoch): the same order after a resume."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.iteration)
        return torch.randperm(self.engine.frames.shape[0], generator=generator)

    def step(self) -> dict[str, float]:
        config = self.config
        started = time.perf_counter()
        error = self.engine.epoch(self.epoch_order(), config.batch_size, self.alpha, config.beta,
                                  config.momentum, config.momentum_every, config.constrain_every)
        loss = float(error)  # waits for the device: the epoch's time is complete
        return {"loss": loss, "epoch_seconds": time.perf_counter() - started}

    def reconstruction(self) -> torch.Tensor:
        return self.engine.reconstruction()

    def evaluate(self) -> dict[str, float]:
        metrics = {"residual": float(self.engine.residual()), "alpha": self.alpha}
        return {**metrics, **self.test_metrics(self.engine.reconstruction())}

    # ----- state: the object is the "model", so best-state restore and resume both see it
    def model_state(self) -> dict[str, Any]:
        # the stored (half) spectrum as it is: a copy, no FFTs, taken at every new best
        return {"native": self.engine.native.clone(), "probe": self.engine.probe.clone()}

    def load_model_state(self, state: dict[str, Any]) -> None:
        if state:
            self.engine.native.copy_(state["native"])
            self.engine.set_probe(state["probe"])

    def extra_state(self) -> dict[str, Any]:
        return {"engine": self.engine.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            self.engine.load(state["engine"])

    def final_metrics(self) -> dict[str, float]:
        final = {"final_residual": float(self.engine.residual())}
        return {**final, **self.test_metrics(self.engine.reconstruction(), prefix="final_test_")}

    def save_figures(self) -> None:
        super().save_figures()
        if self.context.output_dir is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recon = fw.crop_to_object(self.engine.reconstruction().abs(), self.obj_size).cpu()
        panels = [(recon, "mopie reconstruction")]
        if self.experiment.truth_small is not None:
            panels.append((self.experiment.truth_small.cpu(), "ground truth"))
        figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
        for axis, (image, title) in zip(axes[0], panels):
            axis.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            axis.set_title(title)
            axis.axis("off")
        self.context.log_figure("reconstruction", figure, self.iteration)
        figure, axis = plt.subplots(figsize=(4, 4))
        axis.imshow(self.coverage.numpy(), cmap="gray")
        ceiling = "" if self.ceiling is None else f", ceiling SSIM {self.ceiling:.3f}"
        axis.set_title(f"coverage ({len(self.positions)} samples{ceiling})")
        axis.axis("off")
        self.context.log_figure("coverage", figure, self.iteration)
