"""The TorchTrainer `train_loop_per_worker` and the Tune in-trial function: short on purpose.

Both build the trainer from the registry and a validated config, let it restore from the latest
checkpoint through its context, and run `Trainer.fit`. Ray does distribution, checkpoint
persistence and restarts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed.context import RayTrainContext, RayTuneContext
from distributed.resources import prepare_ray_worker
from trainers.base import SharedData
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


@dataclass(frozen=True)
class SharedDataRef:
    """A search's shared data in Ray's object store: the trainer's fingerprint of the config it
    was built from, and the object (put once by the driver, read by every trial)."""

    fingerprint: tuple
    ref: Any  # ray.ObjectRef

    def offer(self, trainer_class, config) -> SharedData | None:
        """The offer a trial's context makes to its trainer; None when the trial's config was
        not what the data was built from (a key of the data in the search space)."""
        if trainer_class.shared_data_fingerprint(config) != self.fingerprint:
            return None
        import ray

        return SharedData(self.fingerprint, lambda: ray.get(self.ref), f"object {self.ref.hex()}")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    spec = get_algorithm(loop_config["algorithm"])
    config = spec.config_class(**loop_config["config"])
    shared = loop_config.get("shared_data")
    offer = shared.offer(spec.trainer_class(), config) if shared is not None else None
    if offer is None:  # a trial reading the shared data does not read the files here
        check_files_on_this_node(config)
    prepare_ray_worker(spec, config)
    context = RayTrainContext(spec.name, config.model_dump(), loop_config["run_dir"], loop_config["run_name"],
                              use_wandb=loop_config.get("use_wandb", False),
                              max_iterations=config.max_iterations, mlflow=loop_config.get("mlflow"),
                              progress=loop_config.get("progress"),
                              remote_storage=loop_config.get("remote_storage"), shared_data=offer)
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
    shared = trial_config.get("shared_data")
    offer = shared.offer(spec.trainer_class(), config) if shared is not None else None
    if offer is None:  # a trial reading the shared data does not read the files here
        check_files_on_this_node(config)
    prepare_ray_worker(spec, config)
    context = RayTuneContext(spec.name, config.model_dump(), use_wandb=trial_config.get("use_wandb", False),
                             mlflow=trial_config.get("mlflow"), shared_data=offer)
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
