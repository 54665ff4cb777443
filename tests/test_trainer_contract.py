"""The Trainer contract without workarounds: `teardown()` after the loop (also after a failure),
`self.resuming` known during `setup`, the no-optimiser step-size mode driven by the schedules and
carried by checkpoints, and checkpoints every `checkpoint_every` iterations plus at a new best."""
from __future__ import annotations

import pytest
import torch

from tests.test_framework import LineConfig, LineTrainer
from trainers.base import Trainer
from trainers.checkpoint import load_checkpoint
from trainers.context import LocalContext


class Recording(LineTrainer):
    def setup(self):
        super().setup()
        self.seen_resuming = self.resuming
        self.torn_down = 0

    def teardown(self):
        self.torn_down += 1


class Failing(Recording):
    def step(self):
        if self.iteration == 2:
            raise RuntimeError("boom")
        return super().step()


def test_teardown_runs_after_the_loop_and_after_a_failure(tmp_path):
    trainer = Recording(LineConfig(max_iterations=3), LocalContext("line"))
    trainer.fit()
    assert trainer.torn_down == 1
    failing = Failing(LineConfig(max_iterations=5), LocalContext("line"))
    with pytest.raises(RuntimeError, match="boom"):
        failing.fit()
    assert failing.torn_down == 1


def test_resuming_is_known_during_setup(tmp_path):
    first = Failing(LineConfig(max_iterations=6, checkpoint_every=1), LocalContext("line", tmp_path))
    with pytest.raises(RuntimeError, match="boom"):  # cut after 2 iterations, both checkpointed
        first.fit()
    assert first.seen_resuming is False
    again = Recording(LineConfig(max_iterations=6), LocalContext("line", tmp_path))
    assert again.seen_resuming is True and again.iteration == 0  # the state is loaded by fit
    again.fit()
    assert [row["iteration"] for row in again.history] == [1, 2, 3, 4, 5, 6]


class StepSizeConfig(LineConfig):
    schedule: str = "step"
    schedule_kwargs: dict = {"step_size": 2, "gamma": 0.5}


class CutStepSize(Exception):
    pass


class StepSizeTrainer(Trainer):
    """A projection-like update x <- x + alpha (target - x): no gradients, no torch optimiser."""

    algorithm = "step-size"
    config_class = StepSizeConfig

    def setup(self):
        self.x = torch.zeros(3)
        self.schedule_step_size()

    def step(self):
        if self.iteration == getattr(self, "cut_at", -1):
            raise CutStepSize()
        self.x += self.current_lr() * (torch.tensor([1.0, 2.0, 3.0]) - self.x)
        return {"loss": float((self.x - torch.tensor([1.0, 2.0, 3.0])).abs().sum())}

    def evaluate(self):
        return {"val_loss": self.step_size_value()}

    def step_size_value(self):
        return self.current_lr()

    def extra_state(self):
        return {"x": self.x.clone()}

    def load_extra_state(self, state):
        self.x = state["x"].clone()


def test_no_optimiser_mode_follows_the_schedule_and_resumes(tmp_path):
    config = StepSizeConfig(lr=0.8, max_iterations=6, patience=0, metric="loss")
    trainer = StepSizeTrainer(config, LocalContext("step-size", tmp_path / "a", resume=False))
    assert trainer.optimizer is None
    result = trainer.fit()
    assert [round(row["lr"], 3) for row in result.history] == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2]
    # cut after 4 iterations, resumed to 6: the same step sizes and the same end point
    cut = StepSizeTrainer(config.model_copy(update={"checkpoint_every": 1}), LocalContext("step-size", tmp_path / "b"))
    cut.cut_at = 4
    with pytest.raises(CutStepSize):
        cut.fit()
    resumed = StepSizeTrainer(config, LocalContext("step-size", tmp_path / "b"))
    assert resumed.resuming
    resumed_result = resumed.fit()
    assert [round(row["lr"], 3) for row in resumed_result.history] == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2]
    assert torch.allclose(resumed.x, trainer.x)


def test_checkpoints_every_n_iterations_and_at_a_new_best(tmp_path):
    # val_loss improves at iterations 1, 2 and 6 only; checkpoint_every 4; the end at 8
    scripted = [5.0, 4.0, 4.5, 4.5, 4.5, 3.0, 3.5, 3.5]
    context = LocalContext("line", tmp_path, keep=100)
    LineTrainer(LineConfig(max_iterations=8, scripted=scripted, checkpoint_every=4), context).fit()
    written = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "checkpoints").glob("checkpoint_*"))
    assert written == [1, 2, 4, 6, 8]


def test_without_checkpoints_at_a_new_best_the_last_one_still_holds_the_best_state(tmp_path):
    # tune.py's default for trials: every checkpoint_every iterations and at the end only
    scripted = [5.0, 4.0, 4.5, 4.5, 4.5, 3.0, 3.5, 3.5]
    context = LocalContext("line", tmp_path, keep=100)
    trainer = LineTrainer(LineConfig(max_iterations=8, scripted=scripted, checkpoint_every=4,
                                     checkpoint_at_best=False), context)
    trainer.fit()
    written = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "checkpoints").glob("checkpoint_*"))
    assert written == [4, 8]
    last = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_000008", "line")["trainer"]
    assert last["best_metrics"]["val_loss"] == 3.0 and last["early_stopping"]["best_iteration"] == 5
