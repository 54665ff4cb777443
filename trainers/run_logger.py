"""Where a run's numbers and pictures go: stdout, TensorBoard, figures on disk, W&B and MLflow (opt-in).

Used by the in-process LocalContext and, on rank 0 only, by the Ray worker context, so that a
run looks the same wherever it ran. Ray Train V2 writes no TensorBoard events by itself.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

SECRET_MARKERS = ("key", "token", "secret", "password")


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config without anything that looks like a secret (never logged anywhere)."""
    return {k: v for k, v in config.items() if not any(m in k.lower() for m in SECRET_MARKERS)}


def format_progress(metrics: dict[str, float], max_iterations: int | None = None) -> str:
    iteration = int(metrics.get("iteration", 0))
    head = f"iter {iteration}" + (f"/{max_iterations}" if max_iterations else "")
    shown = [f"{k}={v:.4g}" for k, v in metrics.items()
             if k not in ("iteration", "done", "elapsed_seconds", "setup_seconds", "final_seconds") and isinstance(v, (int, float))]
    return head + "  " + "  ".join(shown)


class RunLogger:
    def __init__(self, run_dir: str | Path, config: dict[str, Any], run_name: str,
                 use_wandb: bool = False, echo: bool | Callable[[str], None] = True,
                 max_iterations: int | None = None, mlflow: dict[str, str] | None = None):
        self.run_dir = Path(run_dir)
        self.figures_dir = self.run_dir / "figures"
        self.tensorboard_dir = self.run_dir / "tensorboard"
        self._writer = None  # made at the first scalar or figure (no empty event file otherwise)
        # echo: print progress lines (True), not at all (False), or through a function
        self.echo = (lambda line: print(line, flush=True)) if echo is True else echo
        self.max_iterations = max_iterations
        self.wandb_run = start_wandb(run_name, public_config(config), self.run_dir) if use_wandb else None
        # an MLflow run opened (with the config as params) by the process that owns the run
        self.mlflow = None
        if mlflow:
            from trainers.mlflow_tracking import MlflowLogger

            self.mlflow = MlflowLogger(mlflow)

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tensorboard_dir))
        return self._writer

    def log_metrics(self, metrics: dict[str, float]) -> None:
        step = int(metrics.get("iteration", 0))
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "iteration":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(metrics, step)
        if self.echo:
            self.echo(format_progress(metrics, self.max_iterations))

    def log_figure(self, tag: str, figure: Any, iteration: int) -> Path:
        import matplotlib.pyplot as plt

        self.figures_dir.mkdir(parents=True, exist_ok=True)
        path = self.figures_dir / f"{tag}.png"
        figure.savefig(path, dpi=110)
        self.writer.add_figure(tag, figure, iteration, close=False)
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Image(str(path))}, step=iteration)
        if self.mlflow is not None:
            self.mlflow.log_figure(path)
        plt.close(figure)
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def wandb_mode() -> str:
    """W&B stays offline unless an API key is set (or WANDB_MODE says otherwise)."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def start_wandb(run_name: str, config: dict[str, Any], run_dir: Path):
    """One W&B run per training run; offline unless WANDB_API_KEY is set."""
    import wandb

    mode = wandb_mode()
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "trainyard"), name=run_name,
                      config=config, dir=str(run_dir), mode=mode, reinit="finish_previous")
