"""The Ray side of the context seam (trainers/context.py has the in-process twin).

RayTrainContext runs inside a TorchTrainer worker: rank, world size and device come from Ray
Train, `report` goes to `ray.train.report` with a Checkpoint (rank 0 writes it), DDP wrapping
through `ray.train.torch.prepare_model`, metrics averaged over ranks with one all-reduce.
RayTuneContext runs a one-worker trainer directly inside a Tune trial (no TorchTrainer start-up).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.tune
import torch
import torch.distributed as dist

from distributed.storage import Storage
from trainers.checkpoint import STATE_FILE, CheckpointError, WrongAlgorithmError, load_checkpoint
from trainers.context import LoggingMixin
from trainers.run_logger import RunLogger


log = logging.getLogger("trainyard")


def _load_ray_checkpoint(checkpoint, algorithm: str) -> dict[str, Any] | None:
    """The trainer state of Ray's latest checkpoint; when that one is damaged (truncated,
    corrupted, half-copied), the newest older checkpoint of the run that loads, with a warning
    naming the damaged file. Another algorithm's checkpoint is an error, not damage."""
    if checkpoint is None:
        return None
    errors = []
    for candidate in [checkpoint, *_older_checkpoints(checkpoint)]:
        try:
            with candidate.as_directory() as folder:
                return load_checkpoint(Path(folder), algorithm)["trainer"]
        except WrongAlgorithmError:
            raise
        except (CheckpointError, OSError) as error:
            errors.append(str(error))
            log.warning("%s; trying the previous checkpoint", error)
    raise CheckpointError("no checkpoint of this run can be loaded: " + "; ".join(errors))


def _older_checkpoints(checkpoint) -> list:
    """The run's other checkpoint folders older than `checkpoint`, newest first. Ray names them
    checkpoint_<timestamp> (Train) or checkpoint_<number> (Tune): name order is age order."""
    from pyarrow.fs import FileSelector, FileType

    filesystem, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    try:
        entries = filesystem.get_file_info(FileSelector(parent or ".", allow_not_found=True))
    except OSError:
        return []
    older = sorted((e.path for e in entries if e.type == FileType.Directory
                    and e.base_name.startswith("checkpoint_") and e.base_name < name), reverse=True)
    return [type(checkpoint)(folder, filesystem=filesystem) for folder in older]


def _report_with_checkpoint(report, checkpoint_class, metrics: dict[str, float], state: dict[str, Any]) -> None:
    """Write the state into a temporary folder of this process, then report: Ray copies the
    folder into the run's storage and registers the checkpoint only once the copy is done, so a
    crash mid-write or mid-copy leaves no checkpoint that Ray offers. The file is not synced to
    disk (the copy reads it from memory; syncing cost a few ms of every trial of a search)."""
    with tempfile.TemporaryDirectory(prefix="trainyard-ckpt-") as folder:
        torch.save(state, Path(folder) / STATE_FILE)
        report(metrics, checkpoint=checkpoint_class.from_directory(folder))


def quiet_report_log() -> None:
    """Ray Train logs every report, all metrics included, at INFO through a logger named after
    its file (so LoggingConfig's level filter misses it); our progress line says it once."""
    try:
        from ray.train.v2._internal.execution import context as train_context_module
    except ImportError:  # a Ray without this module: nothing to quiet
        return
    logging.getLogger(train_context_module.__file__).setLevel(logging.WARNING)


class RayTrainContext(LoggingMixin):
    def __init__(self, algorithm: str, config: dict[str, Any], run_dir: str | None, run_name: str,
                 use_wandb: bool = False, max_iterations: int | None = None, mlflow: dict[str, str] | None = None,
                 progress: Any = None, remote_storage: dict[str, str] | None = None, shared_data: Any = None):
        train_context = ray.train.get_context()
        self.algorithm = algorithm
        self.shared_data = shared_data  # a SharedData from the search's driver, or None
        self.rank = train_context.get_world_rank()
        self.world_size = train_context.get_world_size()
        self.device = ray.train.torch.get_device()
        quiet_report_log()
        # --storage s3://: rank 0 writes into a local folder and copies it to the run's place in
        # the bucket after every checkpoint and at the end
        self.remote = Storage(**remote_storage) if remote_storage else None
        self.run_name = run_name
        if self.remote is not None and self.rank == 0:
            run_dir = tempfile.mkdtemp(prefix=f"trainyard-{run_name}-")
        # rank 0 alone writes TensorBoard, figures and W&B (V2 writes no TensorBoard itself)
        self.output_dir = Path(run_dir) if self.rank == 0 else None
        # the driver's progress line (a ProgressBoard actor), or None: a progress line per
        # iteration in the log (--verbose)
        self.progress = progress if self.rank == 0 else None
        if self.rank == 0:
            # through logging: Train V2 sends a worker's stdout to the console twice
            echo = False if progress is not None else logging.getLogger("trainyard").info
            self.logger = RunLogger(run_dir, config, run_name, use_wandb=use_wandb, echo=echo,
                                    max_iterations=max_iterations, mlflow=mlflow)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if self.logger is not None:
            self.logger.log_metrics(metrics)
        if self.progress is not None:
            self.progress.update.remote(dict(metrics))  # not waited for
        if state is None or self.rank != 0:
            ray.train.report(metrics)  # every rank reports; only rank 0 carries the checkpoint
            return
        _report_with_checkpoint(ray.train.report, ray.train.Checkpoint, metrics, state)
        self.upload_outputs()

    def upload_outputs(self) -> None:
        if self.remote is not None and self.output_dir is not None:
            self.remote.upload(self.output_dir, self.run_name)

    def close(self) -> None:
        super().close()
        self.upload_outputs()
        if self.remote is not None and self.output_dir is not None:
            shutil.rmtree(self.output_dir, ignore_errors=True)

    def latest_state(self) -> dict[str, Any] | None:
        return _load_ray_checkpoint(ray.train.get_checkpoint(), self.algorithm)

    def prepare_model(self, model: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs or None)

    def average(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1 or not dist.is_initialized():
            return dict(values)
        keys = sorted(k for k, v in values.items() if isinstance(v, (int, float)))
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        tensor /= self.world_size
        return {**values, **dict(zip(keys, tensor.tolist()))}


class RayTuneContext(LoggingMixin):
    """A one-worker trainer inside a Tune trial: no TorchTrainer, Tune's own report/checkpoint."""

    rank = 0
    world_size = 1

    def __init__(self, algorithm: str, config: dict[str, Any], use_wandb: bool = False,
                 mlflow: dict[str, str] | None = None, shared_data: Any = None):
        self.algorithm = algorithm
        self.shared_data = shared_data  # a SharedData from the search's driver, or None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        trial_dir = ray.tune.get_context().get_trial_dir()
        self.output_dir = Path(trial_dir) if trial_dir else None
        # the trial writes its own TensorBoard scalars (tune.py leaves out Tune's TensorBoard
        # logger, which writes every trial's from the driver, one after another), figures, W&B
        if self.output_dir is not None:
            self.logger = RunLogger(self.output_dir, config, ray.tune.get_context().get_trial_name(),
                                    use_wandb=use_wandb, echo=False, mlflow=mlflow)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if self.logger is not None:
            self.logger.log_metrics(metrics)
        if state is None:
            ray.tune.report(metrics)
            return
        _report_with_checkpoint(ray.tune.report, ray.tune.Checkpoint, metrics, state)

    def latest_state(self) -> dict[str, Any] | None:
        return _load_ray_checkpoint(ray.tune.get_checkpoint(), self.algorithm)

    def prepare_model(self, model: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
        return model.to(self.device)

    def average(self, values: dict[str, float]) -> dict[str, float]:
        return dict(values)


__all__ = ["RayTrainContext", "RayTuneContext", "CheckpointError"]
