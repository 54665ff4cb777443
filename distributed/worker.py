"""The TorchTrainer `train_loop_per_worker` and the Tune in-trial function: short on purpose.

Both build the trainer from the registry and a validated config, let it restore from the latest
checkpoint through its context, and run `Trainer.fit`. Ray does distribution, checkpoint
persistence and restarts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distributed.context import RayTrainContext, RayTuneContext
from distributed.resources import prepare_ray_worker
from trainers.config import ConfigError
from trainers.registry import get_algorithm

FAIL_ONCE_ENV = "TRAINYARD_FAIL_ONCE"


def check_files_on_this_node(config) -> None:
    """The files a config names, checked again where they are read: the driver's check sees
    the head's disk, and a path missing on a worker node must say which node."""
    try:
        config.check_files()
    except ConfigError as error:
        import socket

        import ray.util

        raise ConfigError(f"on node {socket.gethostname()} ({ray.util.get_node_ip_address()}): {error}") from None


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    spec = get_algorithm(loop_config["algorithm"])
    config = spec.config_class(**loop_config["config"])
    check_files_on_this_node(config)
    prepare_ray_worker(spec, config)
    context = RayTrainContext(spec.name, config.model_dump(), loop_config["run_dir"], loop_config["run_name"],
                              use_wandb=loop_config.get("use_wandb", False),
                              max_iterations=config.max_iterations, mlflow=loop_config.get("mlflow"),
                              progress=loop_config.get("progress"),
                              remote_storage=loop_config.get("remote_storage"))
    arm_failure_injection(context)
    try:
        spec.trainer_class()(config, context).fit()
    finally:
        context.close()


def tune_trial(trial_config: dict[str, Any]) -> None:
    """A one-worker trial run in the trial's own process, reporting through ray.tune."""
    base = dict(trial_config["base_config"])
    base.update(trial_config["params"])
    spec = get_algorithm(trial_config["algorithm"])
    config = spec.config_class(**base)
    check_files_on_this_node(config)
    prepare_ray_worker(spec, config)
    context = RayTuneContext(spec.name, config.model_dump(), use_wandb=trial_config.get("use_wandb", False),
                             mlflow=trial_config.get("mlflow"))
    try:
        spec.trainer_class()(config, context).fit()
    finally:
        context.close()


def arm_failure_injection(context) -> None:
    """Fault-injection for tests and drills: TRAINYARD_FAIL_ONCE="ITERATION:MARKER_FILE".

    The last rank raises once when it reports ITERATION, and writes MARKER_FILE so that the
    restarted worker group runs through. Off unless the variable is set.
    """
    setting = os.environ.get(FAIL_ONCE_ENV)
    if not setting or context.rank != context.world_size - 1:
        return
    iteration_text, _, marker = setting.partition(":")
    fail_at, marker_path = int(iteration_text), Path(marker)
    report = context.report

    def report_or_fail(metrics, state):
        if int(metrics.get("iteration", -1)) == fail_at and not marker_path.exists():
            marker_path.parent.mkdir(parents=True, exist_ok=True)
            marker_path.write_text("failed once\n")
            raise RuntimeError(f"injected failure at iteration {fail_at} ({FAIL_ONCE_ENV})")
        report(metrics, state)

    context.report = report_or_fail
