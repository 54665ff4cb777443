"""The shared loop, early stopping, schedules, configs, checkpoints: in-process, no Ray."""
from __future__ import annotations

import io
import pickle
import zipfile

import pytest
import torch
from pydantic import Field

from trainers.base import EarlyStopping, Trainer, make_scheduler
from trainers.checkpoint import CheckpointError, load_checkpoint, save_atomic
from trainers.config import (ConfigError, TrainerConfig, build_config, load_yaml_config,
                             overrides_from_sets)
from trainers.context import LocalContext


# ----- a tiny but real trainer: least squares on a fixed problem -------------------------------
class LineConfig(TrainerConfig):
    lr: float = Field(0.1, gt=0, le=10)
    max_iterations: int = Field(30, ge=1)
    patience: int = Field(0, ge=0)
    metric: str = "val_loss"
    scripted: list[float] = Field(default_factory=list)  # if set, evaluate() replays these


class LineTrainer(Trainer):
    algorithm = "line"
    config_class = LineConfig

    def setup(self):
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, 3, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
        self.model = self.context.prepare_model(torch.nn.Linear(3, 1))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr, momentum=0.5)
        self.scheduler = make_scheduler(self.optimizer, self.config.schedule, self.config.max_iterations,
                                        **self.config.schedule_kwargs)
        self.calls = []

    def on_iteration_start(self, iteration):
        self.calls.append(("start", iteration))

    def on_iteration_end(self, iteration, metrics):
        self.calls.append(("end", iteration))
        return False

    def step(self):
        self.optimizer.zero_grad()
        # a little dropout-like noise from the global RNG, so that resuming must restore it
        noise = 0.01 * torch.randn(64)
        loss = ((self.model(self.x).squeeze(-1) - self.y - noise) ** 2).mean()
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def evaluate(self):
        if self.config.scripted:
            return {"val_loss": self.config.scripted[self.iteration]}
        with torch.no_grad():
            return {"val_loss": float(((self.model(self.x).squeeze(-1) - self.y) ** 2).mean())}

    def final_metrics(self):
        return {"test_weight0": float(self.model.weight[0, 0].detach())}


def run_line(tmp_path=None, resume=True, **values):
    config = LineConfig(**values)
    context = LocalContext("line", tmp_path, resume=resume)
    trainer = LineTrainer(config, context)
    return trainer, trainer.fit(), context


def test_loop_learns_and_reports_every_iteration():
    trainer, result, context = run_line(max_iterations=30)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.05 * losses[0]
    assert result.iterations == 30 and len(context.reports) == 30
    assert [row["iteration"] for row in context.reports] == list(range(1, 31))
    assert context.reports[-1]["done"] == 1.0 and "test_weight0" in context.reports[-1]
    assert abs(result.final_metrics["test_weight0"] - 1.0) < 0.1
    assert trainer.calls[:4] == [("start", 0), ("end", 1), ("start", 1), ("end", 2)]


def test_early_stopping_and_best_state_restored():
    scripted = [5.0, 3.0, 2.0, 2.5, 2.6, 2.7, 1.0, 0.5]
    trainer, result, _ = run_line(max_iterations=8, patience=3, scripted=scripted)
    # best is 2.0 at iteration 3; three worse values follow, so it stops after iteration 6
    assert result.stopped_early and result.iterations == 6
    assert result.best_iteration == 3 and result.best_metrics["val_loss"] == 2.0
    best_weights = trainer.best_state["weight"]
    assert torch.equal(trainer.model.weight.detach(), best_weights)


def test_the_final_report_names_the_selected_iteration_without_copying_its_metrics():
    scripted = [5.0, 3.0, 2.0, 2.5, 2.6]
    _, result, context = run_line(max_iterations=5, scripted=scripted)
    final = context.reports[-1]
    assert final["best_val_loss"] == 2.0 and final["best_iteration"] == 3
    # the selected iteration's other numbers are its own report, not repeated as best_*
    assert not [key for key in final if key.startswith("best_") and key not in ("best_val_loss", "best_iteration")]
    selected = context.reports[final["best_iteration"] - 1]
    assert selected["val_loss"] == 2.0 and selected["loss"] == result.best_metrics["loss"]


def test_hook_can_stop_the_loop():
    class StopAtFour(LineTrainer):
        def on_iteration_end(self, iteration, metrics):
            return iteration == 4

    trainer = StopAtFour(LineConfig(max_iterations=20), LocalContext("line"))
    assert trainer.fit().iterations == 4


def test_mode_max_and_min_delta():
    stopper = EarlyStopping("max", patience=2, min_delta=0.1)
    assert stopper.update(0.5, 0) == (True, False)
    assert stopper.update(0.55, 1) == (False, False)  # not better by min_delta
    assert stopper.update(0.7, 2) == (True, False)
    assert stopper.update(0.7, 3) == (False, False)
    assert stopper.update(0.1, 4) == (False, True)
    assert stopper.best == 0.7 and stopper.best_iteration == 2
    assert EarlyStopping("min", patience=0).update(float("nan"), 0) == (False, False)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping("up", 1)


def test_exact_resume_from_checkpoint(tmp_path):
    _, straight, _ = run_line(tmp_path / "a", max_iterations=10, schedule="step",
                              schedule_kwargs={"step_size": 3, "gamma": 0.5})

    class Crash(Exception):
        pass

    class CrashAtFive(LineTrainer):
        def on_iteration_end(self, iteration, metrics):
            if iteration == 5:
                raise Crash
            return False

    config = LineConfig(max_iterations=10, schedule="step", schedule_kwargs={"step_size": 3, "gamma": 0.5})
    with pytest.raises(Crash):
        CrashAtFive(config, LocalContext("line", tmp_path / "b")).fit()
    resumed = LineTrainer(config, LocalContext("line", tmp_path / "b")).fit()
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in straight.history]
    assert resumed.final_metrics == straight.final_metrics


def test_a_finished_runs_checkpoint_holds_its_best_state_once_and_resumes_finished(tmp_path):
    """The final checkpoint: the model is the restored best state, so best_state is stored as the
    same tensors (once in the file); loading it gives a finished run with the best weights."""
    scripted = [5.0, 3.0, 2.0, 2.5, 2.6]
    trainer, result, _ = run_line(tmp_path, max_iterations=5, scripted=scripted, checkpoint_every=1)
    final = sorted((tmp_path / "checkpoints").glob("checkpoint_*"))[-1] / "state.pt"
    state = load_checkpoint(final)["trainer"]
    assert state["finished"] and result.best_iteration == 3
    for key, tensor in state["model"].items():
        assert state["best_state"][key].untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
        assert torch.equal(tensor, trainer.best_state[key])
    # an unfinished checkpoint keeps the two apart: the model moves on after its best
    middle = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_000004")["trainer"]
    assert not middle["finished"] and not torch.equal(middle["model"]["weight"], middle["best_state"]["weight"])
    again = LineTrainer(LineConfig(max_iterations=5, scripted=scripted, checkpoint_every=1),
                        LocalContext("line", tmp_path))
    again_result = again.fit()
    assert again.finished and again_result.iterations == 5 and again_result.best_iteration == 3
    assert torch.equal(again.model.weight.detach(), trainer.best_state["weight"])


def test_schedulers():
    def lrs(name, **kwargs):
        model = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = make_scheduler(optimizer, name, 8, **kwargs)
        seen = []
        for _ in range(8):
            optimizer.step()
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(1.0)  # never improves
            elif scheduler is not None:
                scheduler.step()
            seen.append(optimizer.param_groups[0]["lr"])
        return seen

    assert lrs("none") == [1.0] * 8
    assert lrs("step", step_size=2, gamma=0.5)[:4] == [1.0, 0.5, 0.5, 0.25]
    assert lrs("cosine")[-1] == pytest.approx(0.0, abs=1e-9)
    assert lrs("cosine_warm_restarts", T_0=4)[3] == pytest.approx(1.0)  # restarted
    assert lrs("plateau", patience=1, factor=0.5)[-1] < 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        make_scheduler(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0), "linear")


def test_plateau_follows_mode_max():
    config = LineConfig(max_iterations=6, schedule="plateau", mode="max", metric="val_loss",
                        schedule_kwargs={"patience": 0, "factor": 0.5}, scripted=[1, 2, 3, 4, 5, 6])
    _, result, _ = run_line(**config.model_dump())
    # a rising metric in mode max is improving: the LR must never be cut
    assert {row["lr"] for row in result.history} == {0.1}


# ----- configs ---------------------------------------------------------------------------------
def test_config_errors_name_field_and_range():
    with pytest.raises(ConfigError, match=r"lr = -1: .*greater than 0.*allowed: lr > 0"):
        build_config(LineConfig, {"lr": -1})
    with pytest.raises(ConfigError, match="schedule = 'linear'.*one of none, step, plateau"):
        build_config(LineConfig, {"schedule": "linear"})
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'; known keys: .*lr"):
        build_config(LineConfig, {"learning_rate": 0.1})
    assert build_config(LineConfig, {"lr": "0.5"}).lr == 0.5


def test_set_pairs_are_typed_and_checked():
    assert overrides_from_sets(["lr=1e-3", "schedule=cosine", "eval_ks=[5, 10]", "flag=true"]) == {
        "lr": 1e-3, "schedule": "cosine", "eval_ks": [5, 10], "flag": True}
    with pytest.raises(ConfigError, match="key=value"):
        overrides_from_sets(["lr"])


def test_yaml_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml_config(listed)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml_config(tmp_path / "missing.yaml")


# ----- checkpoints -----------------------------------------------------------------------------
def test_checkpoint_of_other_algorithm_is_refused(tmp_path):
    save_atomic({"algorithm": "gat-simple", "config": {}, "iteration": 1, "trainer": {}}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="written by algorithm 'gat-simple', not 'line'"):
        load_checkpoint(tmp_path, "line")


class Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "state.pt"
    torch.save({"algorithm": "line", "trainer": Boom()}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path, "line")
    assert "pwned" not in capsys.readouterr().out
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match=str(raw)):
        load_checkpoint(raw)


def test_truncated_checkpoint_falls_back_to_previous(tmp_path, capsys):
    trainer, _, context = run_line(tmp_path, max_iterations=4)
    folders = sorted((tmp_path / "checkpoints").glob("checkpoint_*"))
    assert [f.name for f in folders] == ["checkpoint_000003", "checkpoint_000004"]
    newest = folders[-1] / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="checkpoint_000004"):
        load_checkpoint(newest)
    state = LocalContext("line", tmp_path).latest_state()
    assert state["iteration"] == 3
    assert "checkpoint_000004" in capsys.readouterr().out


def test_atomic_save_leaves_no_partial_file(tmp_path):
    class Unsaveable:
        pass

    target = tmp_path / "state.pt"
    save_atomic({"algorithm": "line", "trainer": {"x": torch.ones(2)}}, target)
    with pytest.raises(Exception):
        save_atomic({"algorithm": "line", "trainer": {"bad": Unsaveable()}}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    assert torch.equal(load_checkpoint(target)["trainer"]["x"], torch.ones(2))
    assert zipfile.is_zipfile(io.BytesIO(target.read_bytes()))


def test_a_checkpoint_loaded_under_a_new_lr_takes_the_new_lr(tmp_path):
    """What PBT does: another trial's weights and optimiser state, this trial's config."""
    class PausedAtThree(LineTrainer):
        def on_iteration_end(self, iteration, metrics):
            if iteration == 3:
                raise KeyboardInterrupt  # a checkpoint of iteration 3 exists, the run is not finished
            return False

    with pytest.raises(KeyboardInterrupt):
        PausedAtThree(LineConfig(max_iterations=5, lr=0.1), LocalContext("line", tmp_path)).fit()
    trainer = LineTrainer(LineConfig(max_iterations=5, lr=0.02), LocalContext("line", tmp_path))
    result = trainer.fit()
    assert [row["lr"] for row in result.history][3:] == [0.02, 0.02]
    assert result.history[0]["lr"] == 0.1  # the history itself came from the checkpoint


def test_wandb_is_offline_without_a_key_and_keeps_secrets_out(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    from trainers.run_logger import RunLogger, public_config, wandb_mode

    assert wandb_mode() == "offline"
    assert public_config({"lr": 0.1, "wandb_api_key": "abc", "token": "x"}) == {"lr": 0.1}
    logger = RunLogger(tmp_path, {"lr": 0.1, "api_key": "sekrit"}, "t", use_wandb=True, echo=False)
    logger.log_metrics({"loss": 1.0, "iteration": 1})
    logger.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert not any("sekrit" in p.read_text(errors="ignore") for p in runs[0].rglob("*.yaml"))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_a_diverging_run_ends_with_a_clear_reason():
    from trainers.base import DivergedError

    class Diverges(LineTrainer):
        def evaluate(self):
            return {"val_loss": float("nan") if self.iteration == 2 else 1.0}

    trainer = Diverges(LineConfig(max_iterations=5), LocalContext("line"))
    with pytest.raises(DivergedError, match="diverged at iteration 3: val_loss is nan"):
        trainer.fit()
