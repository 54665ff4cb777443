"""The quiet console: one rich progress line per run (run.py) or per search (tune.py), in place of
Ray's per-iteration lines (`--verbose` brings those back).

run.py: rank 0 sends each iteration's metrics to a `ProgressBoard` actor (no CPU held) without
waiting; the driver polls it while `TorchTrainer.fit()` runs and redraws one line. tune.py: Tune
calls `SearchProgress` in the driver on every trial result.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any

import ray
from ray import tune
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest metrics of a run, written by its rank 0 and read by the driver."""

    def __init__(self):
        self.metrics: dict[str, float] = {}

    def update(self, metrics: dict[str, float]) -> None:
        self.metrics = metrics

    def latest(self) -> dict[str, float]:
        return self.metrics


def _progress(console: Console | None = None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console or Console(), transient=False)


class RunProgress:
    """Context manager around `trainer.fit()`: polls the board every `interval` seconds."""

    def __init__(self, name: str, total: int, metric: str, interval: float = 0.5):
        self.board = ProgressBoard.remote()
        self.name, self.total, self.metric, self.interval = name, total, metric, interval
        self._stop = threading.Event()

    def __enter__(self) -> "RunProgress":
        self.progress = _progress()
        self.task = self.progress.add_task(self.name, total=self.total, status="starting")
        self.progress.start()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def _draw(self) -> None:
        try:
            metrics = ray.get(self.board.latest.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - a missed redraw is harmless
            return
        if metrics:
            value = metrics.get(self.metric)
            status = f"{self.metric} {value:.4g}" if isinstance(value, (int, float)) else ""
            self.progress.update(self.task, completed=min(int(metrics.get("iteration", 0)), self.total),
                                 status=status)

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self._draw()
        self.progress.stop()
        ray.kill(self.board)


class SearchProgress(tune.Callback):
    """One line for a whole search: trials ended out of the total, the best metric so far, ETA."""

    def __init__(self, name: str, total: int, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self.name, self.total = name, total
        self.best: float | None = None
        self.ended = 0
        self.progress = None  # made at the first result: Tune pickles its callbacks with the search

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "progress": None}

    def _redraw(self) -> None:
        if self.progress is None:
            self.progress = _progress()
            self.task = self.progress.add_task(self.name, total=self.total, status="")
            self.progress.start()
        best = f"best {self.metric} {self.best:.4g}" if self.best is not None else ""
        self.progress.update(self.task, completed=self.ended, status=best)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and value == value:
            if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
                self.best = float(value)
        self._redraw()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended += 1
        self._redraw()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended += 1
        self._redraw()

    def on_experiment_end(self, trials, **info) -> None:
        if self.progress is not None:
            self.progress.stop()


PROGRESS_ENV = "TRAINYARD_SEARCH_PROGRESS"


class EnvironmentSearchProgress(SearchProgress):
    """The SearchProgress that Tune makes itself, without arguments, from a class path in its
    callbacks variable (distributed.tune.search_callbacks): its settings are read from
    TRAINYARD_SEARCH_PROGRESS (JSON: name, total, metric, mode)."""

    def __init__(self):
        super().__init__(**json.loads(os.environ[PROGRESS_ENV]))
