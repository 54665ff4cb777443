"""Build the TorchTrainer for one run of one algorithm."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from distributed.resources import WorkerPlan
from distributed.storage import Storage
from distributed.worker import train_loop_per_worker
from trainers.config import TrainerConfig
from trainers.registry import get_algorithm
from trainers.run_logger import SECRET_MARKERS

# AWS_: the S3 endpoint and region of --storage s3://; its secrets stay out (SECRET_MARKERS)
FORWARDED_ENV_PREFIXES = ("TRAINYARD_", "WANDB_", "MLFLOW_", "AWS_")
# Train V2's controller takes each worker's report when it polls them, every 2 s by default,
# and a worker cannot report again before that: iterations shorter than 2 s were stretched to
# 2 s. Polling every 0.25 s costs the controller little. Ray propagates this variable from the
# driver to the controller and the workers.
POLL_ENV, POLL_SECONDS = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"
# Train V2 gives a worker group 60 s to start. On a loaded 2-core machine two workers took
# longer (load average 18); the failed start's placement group stayed reserved while the retry
# asked for another, and the trial waited without end. 300 s still ends a start that cannot
# happen (an infeasible request is refused before Ray is asked, in resources.py).
START_TIMEOUT_ENV, START_TIMEOUT_SECONDS = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300"


def worker_env_vars() -> dict[str, str]:
    """Environment the workers need on a cluster (locally they inherit it anyway), secrets left
    out: Ray writes a runtime_env in plain text to its logs (runtime_env_agent.log) and shows it
    in the dashboard. A worker finds WANDB_API_KEY where wandb looks on its node: the environment
    Ray was started with there (run.py's own local Ray inherits it), or `wandb login`'s ~/.netrc."""
    return {k: v for k, v in os.environ.items()
            if k.startswith(FORWARDED_ENV_PREFIXES) and not any(m in k.lower() for m in SECRET_MARKERS)}


def build_torch_trainer(spec, config: TrainerConfig, plan: WorkerPlan, storage: Path | Storage,
                        run_name: str, *, use_wandb: bool = False, keep_checkpoints: int = 2,
                        max_failures: int = 2, callbacks: list[Any] | None = None,
                        resume_from: Any = None, mlflow: dict[str, str] | None = None,
                        progress: Any = None, shared_data: Any = None) -> TorchTrainer:
    """`spec`: the AlgorithmSpec, or a registered name."""
    if isinstance(spec, str):
        spec = get_algorithm(spec)
    os.environ.setdefault(POLL_ENV, POLL_SECONDS)
    os.environ.setdefault(START_TIMEOUT_ENV, START_TIMEOUT_SECONDS)
    storage = storage if isinstance(storage, Storage) else Storage(local=Path(storage))
    resources = {"CPU": plan.cpus_per_worker}
    if plan.gpus_per_worker > 0:
        resources["GPU"] = plan.gpus_per_worker
    loop_config = {
        "algorithm": spec.reference,  # resolved again in the worker (the registry, or module:Class)
        "config": config.model_dump(),
        # rank 0's TensorBoard and figures: in the run's folder, or staged and copied to S3
        "run_dir": None if storage.remote else str(storage.local / run_name),
        "remote_storage": {"bucket": storage.bucket, "prefix": storage.prefix} if storage.remote else None,
        "run_name": run_name,
        "use_wandb": use_wandb,
        "mlflow": mlflow,  # the MLflow run rank 0 logs into (--mlflow), else None
        "progress": progress,      # the driver's ProgressBoard actor (quiet console), else None
        "shared_data": shared_data,  # a search's SharedDataRef (data built once), else None
    }
    run_config = RunConfig(
        name=run_name,
        storage_path=storage.ray_path(),
        storage_filesystem=storage.ray_filesystem(),
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(
            num_to_keep=keep_checkpoints,
            checkpoint_score_attribute=config.metric,
            checkpoint_score_order=config.mode,
        ),
        callbacks=callbacks or [],
        worker_runtime_env={"env_vars": worker_env_vars()},
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=plan.workers, use_gpu=plan.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=run_config,
        resume_from_checkpoint=resume_from,
    )
