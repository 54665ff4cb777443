"""LocalContext: run a trainer in this process (tests, notebooks, debugging), no Ray.

Checkpoints go to `output_dir/checkpoints/checkpoint_NNNNNN/state.pt`, the newest `keep` are
kept; `latest_state` falls back to the previous checkpoint when the newest cannot be loaded.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from trainers.checkpoint import STATE_FILE, CheckpointError, WrongAlgorithmError, load_checkpoint, save_atomic
from trainers.run_logger import RunLogger


class LoggingMixin:
    """Figures and closing for every context that owns a RunLogger (rank 0 only)."""

    logger: RunLogger | None = None

    def log_figure(self, tag: str, figure: Any, iteration: int) -> None:
        if self.logger is not None:
            self.logger.log_figure(tag, figure, iteration)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()


class LocalContext(LoggingMixin):
    rank = 0
    world_size = 1

    def __init__(self, algorithm: str, output_dir: str | Path | None = None, config: dict | None = None,
                 device: str = "cpu", keep: int = 2, echo: bool = False, use_wandb: bool = False,
                 resume: bool = True):
        self.algorithm = algorithm
        self.device = torch.device(device)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.keep = keep
        self.resume = resume
        self.reports: list[dict[str, float]] = []
        if self.output_dir is not None:
            self.logger = RunLogger(self.output_dir, config or {}, run_name=algorithm,
                                    use_wandb=use_wandb, echo=echo)

    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.output_dir is None else self.output_dir / "checkpoints"

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.reports.append(dict(metrics))
        if self.logger is not None:
            self.logger.log_metrics(metrics)
        if state is not None and self.checkpoint_dir is not None:
            folder = self.checkpoint_dir / f"checkpoint_{int(state['iteration']):06d}"
            save_atomic(state, folder / STATE_FILE)
            self._prune()

    def _checkpoints(self) -> list[Path]:
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoint_dir.glob("checkpoint_*") if p.is_dir())

    def _prune(self) -> None:
        for old in self._checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_state(self) -> dict[str, Any] | None:
        if not self.resume:
            return None
        for folder in reversed(self._checkpoints()):
            try:
                return load_checkpoint(folder, self.algorithm)["trainer"]
            except WrongAlgorithmError:
                raise  # another algorithm's checkpoint is a mistake, not damage
            except CheckpointError as error:
                print(f"warning: {error}; trying the previous checkpoint", flush=True)
        return None

    def prepare_model(self, model: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
        return model.to(self.device)

    def average(self, values: dict[str, float]) -> dict[str, float]:
        return dict(values)
