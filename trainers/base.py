"""The one iteration loop every algorithm shares, and its small parts.

An algorithm subclasses `Trainer` and fills in `setup`, `step` and `evaluate` (and, where it has
held-out data, `final_metrics`; where it holds something to close, `teardown`; where every run of
a search reads the same data, `shared_data_keys` and `build_shared_data`). During `setup`,
`self.resuming` says whether the run continues from a checkpoint (loaded after `setup`). An
algorithm whose step size is not a torch optimiser's calls `schedule_step_size()` in `setup`. `Trainer.fit` owns the loop: hooks, step, evaluate, report,
learning-rate schedule, early stopping, best-state tracking and restore. No Ray here: the trainer
talks to the outside world through a `Context` (LocalContext in-process, the Ray contexts in
distributed/).
"""
from __future__ import annotations

import abc
import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch

from trainers import collective
from trainers.config import TrainerConfig


class Context(Protocol):
    """What a trainer may ask of where it runs."""

    rank: int
    world_size: int
    device: torch.device
    output_dir: Any  # pathlib.Path for figures and logs (rank 0 writes), or None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None: ...
    def latest_state(self) -> dict[str, Any] | None: ...
    def prepare_model(self, model: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module: ...
    def average(self, values: dict[str, float]) -> dict[str, float]: ...
    def log_figure(self, tag: str, figure: Any, iteration: int) -> None: ...


@dataclass(frozen=True)
class SharedData:
    """Data a run is offered instead of building it: what `build_shared_data` returned for a
    config whose `shared_data_keys` had the values in `fingerprint`. `load()` returns it (the
    Ray layer fetches it from Ray's object store then, so that the fetch counts in the run's
    setup time); `source` says where it came from, for the run's metrics."""

    fingerprint: tuple
    load: Callable[[], Any]
    source: str


class DivergedError(RuntimeError):
    """The loss or the monitored metric became NaN or infinite."""


@dataclass
class TrainingResult:
    metrics: dict[str, float]          # metrics of the last iteration
    best_metrics: dict[str, float]     # metrics of the best iteration
    final_metrics: dict[str, float]    # held-out metrics computed on the best state
    best_iteration: int
    iterations: int
    stopped_early: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class EarlyStopping:
    """Patience on one metric; `patience == 0` never stops. Remembers the best value seen."""

    def __init__(self, mode: str, patience: int, min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.best: float | None = None
        self.best_iteration = -1
        self.bad_iterations = 0

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, iteration: int) -> tuple[bool, bool]:
        """Record one value; returns (is_new_best, should_stop)."""
        if self.improved(value):
            self.best, self.best_iteration, self.bad_iterations = value, iteration, 0
            return True, False
        self.bad_iterations += 1
        return False, self.patience > 0 and self.bad_iterations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_iteration": self.best_iteration, "bad_iterations": self.bad_iterations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_iteration = state["best"], state["best_iteration"]
        self.bad_iterations = state["bad_iterations"]


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, max_iterations: int = 100, **kwargs: Any):
    """A learning-rate schedule stepped once per iteration; `plateau` is stepped with the metric."""
    schedulers = torch.optim.lr_scheduler
    if name == "none":
        return None
    if name == "step":
        return schedulers.StepLR(optimizer, **{"step_size": max(1, max_iterations // 3), "gamma": 0.1, **kwargs})
    if name == "plateau":
        return schedulers.ReduceLROnPlateau(optimizer, **{"mode": "min", "factor": 0.5, "patience": 3, **kwargs})
    if name == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, **{"T_max": max_iterations, **kwargs})
    if name == "cosine_warm_restarts":
        return schedulers.CosineAnnealingWarmRestarts(optimizer, **{"T_0": max(1, max_iterations // 4), **kwargs})
    raise ValueError(f"unknown schedule {name!r}; choose none, step, plateau, cosine, cosine_warm_restarts")


class StepSize(torch.optim.Optimizer):
    """The step size of an algorithm that has no torch optimiser (a projection method's alpha):
    torch's learning-rate schedules drive its `lr` as an optimiser's. It updates nothing; the
    one placeholder tensor is there because torch's Optimizer refuses an empty parameter list."""

    def __init__(self, lr: float):
        super().__init__([torch.zeros(0)], {"lr": lr})

    # torch wraps these four Optimizer methods to keep torch.compile out of them, and the wrapper's
    # first call imports torch._dynamo: about 4 s of a process's first run on 2 cores, for a step
    # size that optimises nothing. Plain versions of the little they do here:
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.param_groups.append({**self.defaults, **param_group, "params": list(param_group["params"])})

    def state_dict(self) -> dict[str, Any]:
        return {"state": {}, "param_groups": [{k: v for k, v in group.items() if k != "params"}
                                              for group in self.param_groups]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    @torch.no_grad()
    def step(self, closure=None):
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random generator the loop touches, as plain data (loadable with weights_only)."""
    return {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


class Trainer(abc.ABC):
    """Template for every algorithm. Subclasses set `algorithm` and `config_class`."""

    algorithm: ClassVar[str] = ""
    config_class: ClassVar[type[TrainerConfig]] = TrainerConfig
    # the config keys that `build_shared_data`'s result depends on (and no other); empty: the
    # algorithm shares nothing between the runs of a search
    shared_data_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TrainerConfig, context: Context):
        self.config = config
        self.context = context
        self.device = context.device
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.early_stopping = EarlyStopping(config.mode, config.patience, config.min_delta)
        self.best_state: dict[str, Any] | None = None
        self.best_metrics: dict[str, float] = {}
        self.finished = False
        self.shared_data_source: str | None = None  # set by shared_data(): "built" or where it was read
        self.shared_data_seconds = 0.0
        self._fit_started = time.perf_counter()
        # every rank starts from the same weights; data order differs by rank where it should
        seed_everything(config.seed)
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.step_size: StepSize | None = None  # the no-optimiser mode (schedule_step_size)
        self.scheduler = None
        # the checkpoint to continue from, read before setup so that setup knows (resuming)
        self._resume_from = context.latest_state()
        self.resuming = self._resume_from is not None
        started = time.perf_counter()
        self.setup()
        self.setup_seconds = time.perf_counter() - started

    # ----- data shared by the runs of a search -----------------------------------------------
    @classmethod
    def build_shared_data(cls, config: TrainerConfig) -> Any:
        """What every run with the same values of `shared_data_keys` reads and never changes
        (measurements, splits, graphs, fixed priors), built on the CPU from those keys alone; it
        must pickle. A search builds it once and offers it to every trial (a run without such an
        offer builds its own through `shared_data()`)."""
        return None

    @classmethod
    def shared_data_fingerprint(cls, config: TrainerConfig) -> tuple:
        """The values `build_shared_data(config)` depends on: equal fingerprints, equal data."""
        return (cls.algorithm or cls.__name__, *((key, repr(getattr(config, key))) for key in cls.shared_data_keys))

    def shared_data(self) -> Any:
        """This run's shared data, from `setup`: the context's offer (`context.shared_data`, a
        SharedData) when it was built from this config's values of `shared_data_keys`, else
        built here. Treat it as read-only: in a search the same object serves every trial."""
        offer = getattr(self.context, "shared_data", None)
        started = time.perf_counter()
        if offer is not None and offer.fingerprint == self.shared_data_fingerprint(self.config):
            data, self.shared_data_source = offer.load(), offer.source
        else:
            data, self.shared_data_source = self.build_shared_data(self.config), "built"
        self.shared_data_seconds = time.perf_counter() - started
        return data

    # ----- what an algorithm fills in -------------------------------------------------------
    def setup(self) -> None:
        """Build data, model, optimiser and scheduler (self.model/self.optimizer/self.scheduler)."""

    @abc.abstractmethod
    def step(self) -> dict[str, float]:
        """Train for one iteration; return training metrics."""

    def evaluate(self) -> dict[str, float]:
        """Metrics after the iteration (validation metrics where the algorithm has them)."""
        return {}

    def final_metrics(self) -> dict[str, float]:
        """Held-out metrics, computed once on the best state after the loop."""
        return {}

    def save_outputs(self) -> None:
        """Write the run's results as data files (rank 0 only, after the best state is restored):
        what a user reads back, such as a reconstruction. Always written, figures or not."""

    def save_figures(self) -> None:
        """Draw the algorithm's figures (rank 0 only, unless `figures` is off; the base plots
        learning curves). Matplotlib costs seconds per run: most of a tiny search trial."""
        if self.context.output_dir is not None and self.history:
            from trainers.plots import plot_learning_curves

            figure = plot_learning_curves(self.history, self.config.metric)
            self.context.log_figure("learning_curves", figure, self.iteration)

    def teardown(self) -> None:
        """Release what setup acquired (actors, servers, files); runs after the loop, also when
        it failed."""

    def schedule_step_size(self, lr: float | None = None) -> StepSize:
        """The no-optimiser mode: the config's schedule drives a step size that is not a torch
        optimiser's (read it with `current_lr()`); checkpoints and PBT restarts carry it."""
        config = self.config
        self.step_size = StepSize(config.lr if lr is None else lr)
        self.scheduler = make_scheduler(self.step_size, config.schedule, config.max_iterations,
                                        **config.schedule_kwargs)
        self.step_size.step()  # once: the schedules warn when they step before the optimiser
        return self.step_size

    # hooks: return True from on_iteration_end to stop
    def on_iteration_start(self, iteration: int) -> None:
        pass

    def on_iteration_end(self, iteration: int, metrics: dict[str, float]) -> bool:
        return False

    # ----- state ------------------------------------------------------------------------------
    def model_state(self) -> dict[str, Any]:
        model = getattr(self.model, "module", self.model)  # unwrap DDP
        return {} if model is None else copy.deepcopy(model.state_dict())

    def load_model_state(self, state: dict[str, Any]) -> None:
        model = getattr(self.model, "module", self.model)
        if model is not None and state:
            model.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: weights, optimiser, schedule, counters, RNG."""
        model = self.model_state()
        return {
            "iteration": self.iteration,
            "finished": self.finished,
            "model": model,
            "optimizer": self._lr_owner.state_dict() if self._lr_owner else {},
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "early_stopping": self.early_stopping.state_dict(),
            # a finished run holds its best state in the model (restored by _finish): the same
            # tensors, which torch.save writes once (a final checkpoint of half the size)
            "best_state": model if self.finished and self.best_state else (self.best_state or {}),
            "best_metrics": dict(self.best_metrics),
            "history": list(self.history),
            "rng": rng_state(),
            # each rank's own generators: ranks draw differently (dropout over a rank's own
            # batch, a rank's share of the data), so rank 0's state on every rank after a restart
            # would part from the uninterrupted run; a collective, called on every rank alike
            "rng_by_rank": collective.gather(rng_state(), self.context.world_size),
            "extra": self.extra_state(),
            "config_lr": float(self.config.lr),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.finished = bool(state.get("finished", False))
        self.load_model_state(state["model"])
        if self._lr_owner and state["optimizer"]:
            self._lr_owner.load_state_dict(state["optimizer"])
            if state.get("config_lr", self.config.lr) != self.config.lr:
                self._restart_lr(self.config.lr)  # PBT exploit: new config, old weights
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.best_state = state["best_state"] or None
        self.best_metrics = dict(state["best_metrics"])
        self.history = list(state["history"])
        by_rank = state.get("rng_by_rank") or []
        # the same world size: each rank its own state; another one (or an older checkpoint):
        # rank 0's, on every rank
        set_rng_state(by_rank[self.context.rank] if len(by_rank) == self.context.world_size else state["rng"])
        self.load_extra_state(state.get("extra", {}))

    @property
    def _lr_owner(self) -> torch.optim.Optimizer | None:
        """What holds the learning rate: the optimiser, or the step size of the no-optimiser mode."""
        return self.optimizer if self.optimizer is not None else self.step_size

    def _restart_lr(self, lr: float) -> None:
        for group in self._lr_owner.param_groups:
            group["lr"] = group["initial_lr"] = lr
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr for _ in self._lr_owner.param_groups]

    def extra_state(self) -> dict[str, Any]:
        """Algorithm-specific counters to resume (sample index, masks...)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm or type(self).__name__,
            "config": self.config.model_dump(),
            "iteration": self.iteration,
            "trainer": self.state_dict(),
        }

    # ----- the loop ---------------------------------------------------------------------------
    def current_lr(self) -> float:
        owner = self._lr_owner
        return float(owner.param_groups[0]["lr"]) if owner is not None else float("nan")

    def _step_scheduler(self, metrics: dict[str, float]) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            value = metrics[self.config.metric]
            # the plateau scheduler always minimises; flip the sign for metrics we maximise
            self.scheduler.step(value if self.config.mode == "min" else -value)
        else:
            self.scheduler.step()

    def run_iteration(self) -> tuple[dict[str, float], bool]:
        """One iteration: hooks, step, evaluate, schedule, early stopping. Returns (metrics, stop)."""
        started = time.perf_counter()
        self.on_iteration_start(self.iteration)
        metrics = dict(self.step())
        metrics.update(self.evaluate())
        # every rank must take the same decision below, so agree on the numbers first
        metrics = self.context.average(metrics)
        if self.config.metric not in metrics:
            raise KeyError(
                f"metric {self.config.metric!r} is not reported by {self.algorithm}; "
                f"available: {', '.join(sorted(metrics))}"
            )
        self._check_finite(metrics)
        metrics["lr"] = self.current_lr()
        self._step_scheduler(metrics)
        is_best, stop = self.early_stopping.update(metrics[self.config.metric], self.iteration)
        if is_best:
            self.best_state = self.model_state()
            self.best_metrics = dict(metrics)
        self.iteration += 1
        metrics["iteration"] = self.iteration
        metrics["iteration_seconds"] = time.perf_counter() - started
        # wall clock since fit() began, reports included: benchmarks difference it
        metrics["elapsed_seconds"] = time.perf_counter() - self._fit_started
        stop = self.on_iteration_end(self.iteration, metrics) or stop
        self.history.append(dict(metrics))
        return metrics, stop

    def _check_finite(self, metrics: dict[str, float]) -> None:
        """A NaN/inf loss or monitored metric ends the run with a reason, not a silent best of NaN."""
        for key in dict.fromkeys(("loss", self.config.metric)):
            value = metrics.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise DivergedError(f"{self.algorithm} diverged at iteration {self.iteration + 1}: "
                                    f"{key} is {value}")

    def fit(self) -> TrainingResult:
        try:
            return self._run_loop()
        finally:
            self.teardown()

    def _run_loop(self) -> TrainingResult:
        started = self._fit_started = time.perf_counter()
        state, self._resume_from = self._resume_from, None
        if state is not None:
            self.load_state_dict(state)
        metrics: dict[str, float] = self.history[-1] if self.history else {}
        stopped_early = False
        while not self.finished and self.iteration < self.config.max_iterations:
            metrics, stop = self.run_iteration()
            last = stop or self.iteration >= self.config.max_iterations
            # a checkpoint every checkpoint_every iterations and (checkpoint_at_best) at each new
            # best, so that best-K retention has the best states to keep; the last one in _finish
            new_best = self.early_stopping.best_iteration == self.iteration - 1
            due = self.iteration % self.config.checkpoint_every == 0 or (self.config.checkpoint_at_best and new_best)
            if not last:
                self.context.report(metrics, self.checkpoint_payload() if due else None)
            if stop:
                stopped_early = True
                break
        return self._finish(metrics, stopped_early, time.perf_counter() - started)

    def _finish(self, metrics: dict[str, float], stopped_early: bool, seconds: float) -> TrainingResult:
        """Restore the best state, compute held-out metrics on it, report once with a checkpoint."""
        if self.best_state:
            self.load_model_state(self.best_state)
        self.finished = True
        started = time.perf_counter()
        final = self.final_metrics()
        final_seconds = time.perf_counter() - started
        summary = {
            **metrics,
            # the selected iteration's value of the selection metric alone: its other metrics are
            # that iteration's report (best_iteration says which), and every numeric key of a
            # report costs a search's driver a running statistic per trial, serialised into the
            # experiment state (a copy of every metric cost a few per cent of a search of short trials)
            **({f"best_{self.config.metric}": self.best_metrics[self.config.metric]} if self.best_metrics else {}),
            **final,
            "best_iteration": self.early_stopping.best_iteration + 1,
            "stopped_early": float(stopped_early),
            "setup_seconds": self.setup_seconds,
            "final_seconds": final_seconds,  # the held-out evaluation of the selected state
            **({"shared_data": self.shared_data_source, "shared_data_seconds": self.shared_data_seconds}
               if self.shared_data_source else {}),
            "done": 1.0,
        }
        if self.context.rank == 0:
            self.save_outputs()
            if self.config.figures:
                self.save_figures()
        self.context.report(summary, self.checkpoint_payload())
        return TrainingResult(
            metrics=metrics,
            best_metrics=self.best_metrics,
            final_metrics=final,
            best_iteration=self.early_stopping.best_iteration + 1,
            iterations=self.iteration,
            stopped_early=stopped_early,
            seconds=seconds,
            history=self.history,
        )
