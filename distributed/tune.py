"""Build the Ray Tune search for one algorithm, with resources planned so it cannot deadlock.

Two kinds of trial:
- inline: a trial that needs one worker runs the trainer in the trial's own process through
  RayTuneContext (`ray.tune.report`), so small trials are not mostly TorchTrainer start-up;
- train: the V2 way for multi-worker trials: a function trainable (holding 0.01 CPU) launches a
  TorchTrainer with TuneReportCallback and a stable per-trial run name, so that a restarted
  trial resumes its Train run.
Data every trial reads and none changes (the trainer's `build_shared_data`) is built once by the
driver and put into Ray's object store; each trial fetches it instead of building it.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.tune as tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

from distributed.resources import ResourceError, WorkerPlan, plan_workers
from distributed.worker import SharedDataRef, tune_trial
from trainers.registry import AlgorithmSpec, get_algorithm

DRIVER_CPU = 0.01  # a Tune-over-Train trial's own process does no heavy work
PBT_INTERVAL = 2   # iterations between PBT's exploit/explore steps; trials checkpoint as often


@dataclass(frozen=True)
class TrialPlan:
    mode: str                  # "inline" or "train"
    concurrency: int
    trial_resources: dict[str, float]
    workers: WorkerPlan | None  # for "train" trials


def plan_trials(workers_per_trial: int, gpus_per_worker: float, cpus: float, gpus: float,
                max_concurrent: int | None, trial_mode: str = "auto", actor_cpus: float = 0.0,
                actor_label: str = "actor") -> TrialPlan:
    """Resources per trial and how many run at once, from what the cluster really has.

    `actor_cpus`: CPUs that each trial's own Ray actors hold outside the trial's resources (an
    algorithm's RayParts, `actor_label` naming them): fewer trials run at once so that every
    trial's actors find their CPUs, and a trial that cannot fit at all is refused here."""
    if trial_mode not in ("auto", "inline", "train"):
        raise ValueError(f"trial mode must be auto, inline or train, got {trial_mode!r}")
    if trial_mode == "inline" and workers_per_trial > 1:
        raise ResourceError("--trial-mode inline runs one worker per trial; use --trial-mode train for more")
    mode = "inline" if trial_mode == "inline" or (trial_mode == "auto" and workers_per_trial == 1) else "train"
    learner_cpus = 1.0 if mode == "inline" else DRIVER_CPU + workers_per_trial
    if actor_cpus and cpus - actor_cpus < learner_cpus - 1e-9:
        raise ResourceError(f"a trial's {actor_label}s hold {actor_cpus:g} CPUs and its learner needs "
                            f"{learner_cpus:g} more; the cluster has {cpus:g} CPUs: use fewer {actor_label}s "
                            f"or fewer CPUs for each")
    if mode == "inline":
        cpu = min(1.0, cpus)
        if gpus_per_worker > gpus + 1e-9:
            raise ResourceError(f"a trial needs {gpus_per_worker:g} GPU; the cluster has {gpus:g}")
        fit = min(math.floor(cpus / (cpu + actor_cpus) + 1e-9),
                  math.floor(gpus / gpus_per_worker + 1e-9) if gpus_per_worker else 10**6)
        resources = {"CPU": cpu, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
        return TrialPlan("inline", _concurrency(fit, max_concurrent), resources, None)
    # train trials: the driver's sliver plus the workers, never more than the cluster holds
    per_trial_cpu = DRIVER_CPU + workers_per_trial + actor_cpus
    fit = max(1, math.floor(cpus / per_trial_cpu + 1e-9))
    if gpus_per_worker:
        fit = min(fit, math.floor(gpus / (gpus_per_worker * workers_per_trial) + 1e-9))
        if fit < 1:
            raise ResourceError(f"a trial needs {workers_per_trial * gpus_per_worker:g} GPUs; the cluster has {gpus:g}")
    concurrency = _concurrency(fit, max_concurrent)
    share = (cpus - concurrency * (DRIVER_CPU + actor_cpus)) / concurrency
    workers = plan_workers(workers_per_trial, gpus_per_worker, share, gpus / concurrency)
    return TrialPlan("train", concurrency, {"CPU": DRIVER_CPU}, workers)


def _concurrency(fit: int, max_concurrent: int | None) -> int:
    return max(1, min(fit, max_concurrent) if max_concurrent else fit)


def make_scheduler(name: str, metric_budget: int, space: dict[str, Any]):
    if name == "fifo":
        return FIFOScheduler()
    if name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=metric_budget,
                             grace_period=max(1, metric_budget // 8), reduction_factor=2)
    if name == "pbt":
        mutations = {k: v for k, v in space.items() if isinstance(v, tune.search.sample.Float)}
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=PBT_INTERVAL,
                                       hyperparam_mutations=mutations or {"lr": space["lr"]})
    raise ValueError(f"unknown scheduler {name!r}; choose asha, pbt or fifo")


def make_search(name: str, metric: str, mode: str):
    if name == "random":
        return None  # Tune's BasicVariantGenerator
    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=metric, mode=mode)
    raise ValueError(f"unknown search {name!r}; choose random or optuna")


def put_shared_data(spec: AlgorithmSpec, config, space: dict[str, Any]) -> tuple[SharedDataRef | None, str]:
    """The trainer's shared data (measurements, splits, graphs), built once here and put into
    Ray's object store for every trial; with what it did, in words. None when the algorithm
    shares nothing, or when the space varies a key the data is built from: each trial then
    builds its own (a trial checks the fingerprint itself, so a mismatch can only cost time)."""
    trainer_class = spec.trainer_class()
    keys = set(trainer_class.shared_data_keys)
    if not keys:
        return None, ""
    varied = sorted(keys & set(space))
    if varied:
        return None, f"each trial builds its own data (the space varies {', '.join(varied)})"
    started = time.perf_counter()
    data = trainer_class.build_shared_data(config)
    if data is None:
        return None, ""
    ref = ray.put(data)
    return (SharedDataRef(trainer_class.shared_data_fingerprint(config), ref),
            f"data built once for every trial ({time.perf_counter() - started:.1f} s, in Ray's object store)")


def run_train_trial(trial_config: dict[str, Any], *, algorithm: str, base_config: dict[str, Any],
                    workers: WorkerPlan, storage: str, use_wandb: bool, mlflow: dict[str, str] | None,
                    shared_data: SharedDataRef | None = None) -> None:
    """A Tune trial that launches a TorchTrainer (Tune over Train, the Ray 2.60 way)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from distributed.train import build_torch_trainer

    spec = get_algorithm(algorithm)
    config = spec.config_class(**{**base_config, **trial_config})
    trial_id = tune.get_context().get_trial_id()
    trainer = build_torch_trainer(spec, config, workers, Path(storage), f"train-trial_id={trial_id}",
                                  use_wandb=use_wandb, callbacks=[TuneReportCallback()],
                                  mlflow=trial_mlflow_run(mlflow, config.model_dump()), shared_data=shared_data)
    trainer.fit()


def run_inline_trial(trial_config: dict[str, Any], *, algorithm: str, base_config: dict[str, Any],
                     use_wandb: bool, mlflow: dict[str, str] | None,
                     shared_data: SharedDataRef | None = None) -> None:
    tune_trial({"algorithm": algorithm, "base_config": base_config, "params": trial_config,
                "use_wandb": use_wandb, "mlflow": trial_mlflow_run(mlflow, {**base_config, **trial_config}),
                "shared_data": shared_data})


def trial_mlflow_run(settings: dict[str, str] | None, config: dict[str, Any]) -> dict[str, str] | None:
    """With --mlflow: this trial's MLflow run (found again by its trial id after a restart)."""
    if settings is None:
        return None
    from trainers import mlflow_tracking

    context = tune.get_context()
    return mlflow_tracking.open_run(settings, context.get_trial_id(), context.get_trial_name(), config,
                                    tags={"trial_id": context.get_trial_id()})


def build_trainable(plan: TrialPlan, spec: AlgorithmSpec, base_config: dict[str, Any], storage: Path,
                    use_wandb: bool, mlflow: dict[str, str] | None = None, shared_data: SharedDataRef | None = None):
    """The trial function with its fixed arguments; `spec.reference` is what the trial resolves
    the algorithm from again (a registered name, or package.module:Class). The trial functions
    come from distributed.trials, which imports this module only when a trial runs."""
    from distributed.trials import inline_trial, train_trial

    if plan.mode == "inline":
        function = tune.with_parameters(inline_trial, algorithm=spec.reference, base_config=base_config,
                                        use_wandb=use_wandb, mlflow=mlflow, shared_data=shared_data)
    else:
        function = tune.with_parameters(train_trial, algorithm=spec.reference, base_config=base_config,
                                        workers=plan.workers, storage=str(storage / "train_runs"),
                                        use_wandb=use_wandb, mlflow=mlflow, shared_data=shared_data)
    return tune.with_resources(function, plan.trial_resources)


def trial_namer(prefix: str):
    """Trial names and folders that carry the algorithm: `mopie_00003_lr=0.3,...` is shortened by
    Tune; ours are `PREFIX_NNNNN` (the trial's id ends in its sequence number)."""
    def name(trial) -> str:
        return f"{prefix}_{trial.trial_id}"

    return name


# Tune's CSV and JSON result files, named here because tune.py turns Tune's automatic loggers off
# (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS) to leave out its TensorBoard one: each trial writes its own
# scalars, in parallel, instead of the driver writing all of them in turn
RESULT_LOGGERS = (CSVLoggerCallback, JsonLoggerCallback)
# Tune records which callbacks a search was given in RunConfig (usage telemetry) by importing its
# W&B, MLflow, Comet and Aim integrations, W&B and MLflow themselves with them: 2-4 s of the
# driver's time before the first trial on 2 cores. The callbacks it makes from the class paths in
# this variable (without arguments) join after that check.
CALLBACKS_ENV = "RAY_TUNE_CALLBACKS"


@contextmanager
def search_callbacks(progress: dict[str, Any] | None):
    """While a search runs: Tune's CSV and JSON loggers, a Ctrl-C that waits for the checkpoints
    being saved and, given its settings (name, total, metric, mode), the one-line progress, handed
    to Tune through its environment variable after any callbacks a user named there; the
    environment as it was afterwards, so that no later search in this process inherits them."""
    from distributed.interrupt import GracefulInterrupt
    from distributed.progress import PROGRESS_ENV, EnvironmentSearchProgress

    classes = [*RESULT_LOGGERS, GracefulInterrupt, *([EnvironmentSearchProgress] if progress else [])]
    users = [path for path in os.environ.get(CALLBACKS_ENV, "").split(",") if path.strip()]
    settings = {CALLBACKS_ENV: ",".join([*users, *(f"{c.__module__}.{c.__qualname__}" for c in classes)]),
                PROGRESS_ENV: json.dumps(progress) if progress else None}
    with environment(settings):
        yield


@contextmanager
def environment(settings: dict[str, str | None]):
    """These environment variables set (None: unset) while the block runs; each as it was after."""
    saved = {key: os.environ.get(key) for key in settings}

    def apply(values: dict[str, str | None]) -> None:
        for key, value in values.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value

    apply(settings)
    try:
        yield
    finally:
        apply(saved)


def build_tuner(trainable, space: dict[str, Any], *, metric: str, mode: str, scheduler, search,
                num_samples: int, concurrency: int, storage: Path, name: str, trial_prefix: str = "trial",
                reuse_actors: bool = False, max_failures: int = 1, verbose: bool = True) -> tune.Tuner:
    """The search; run its `fit()` inside `search_callbacks` (its loggers and progress line)."""
    # W&B: every trial logs its own W&B run from inside the trial (RunLogger), in the group
    # tune.py sets (WANDB_RUN_GROUP). Ray's WandbLoggerCallback is not used: it would log every
    # trial a second time, and it hands WANDB_API_KEY to its actor through a runtime_env, which
    # Ray writes in plain text to runtime_env_agent.log.
    namer = trial_namer(trial_prefix)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, search_alg=search,
                                    num_samples=num_samples, max_concurrent_trials=concurrency,
                                    # inline trials: the next trial reuses the process (torch and
                                    # torch-geometric already imported) instead of starting one
                                    reuse_actors=reuse_actors,
                                    trial_name_creator=namer, trial_dirname_creator=namer),
        run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  verbose=2 if verbose else 0,
                                  # a trial's files are written on the node that ran it: copied
                                  # into the trial's folder under the storage when the trial ends
                                  # (and every sync_period), not at each checkpoint, where Ray
                                  # would wait for the copy of the whole folder
                                  sync_config=tune.SyncConfig(sync_artifacts=True,
                                                              sync_artifacts_on_checkpoint=False)),
    )


def restore_or_build(experiment_dir: Path, resume: bool, trainable, space: dict[str, Any], build):
    """The search to run: an interrupted one restored from its folder (`--resume`, finished trials
    kept, unfinished and errored ones run again from their checkpoints), else `build()`."""
    if resume and tune.Tuner.can_restore(str(experiment_dir)):
        return tune.Tuner.restore(str(experiment_dir), trainable=trainable, param_space=space,
                                  resume_unfinished=True, resume_errored=True)
    return build()
