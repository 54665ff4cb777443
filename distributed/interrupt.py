"""Ctrl-C during a search without throwing away a checkpoint being saved.

A trial's report with a checkpoint is two steps for Tune: it processes the report (the trial's
result files have it), then asks the trial's actor to save the checkpoint, and registers it only
when that save comes back. Tune's own Ctrl-C handler ends the search after the step in progress,
so a Ctrl-C in between leaves the checkpoint unregistered, and `--resume` runs the trial again
from an older one (or from the start).

GracefulInterrupt sits between the signal and Tune's handler: it hands a Ctrl-C on at the end of
the first step in which no trial is saving a checkpoint, at most a second after it came, and at
once at a second Ctrl-C. A trial cut between its final report and that report's save would run
again at `--resume`. In a search of many short trials on many CPUs some trial is saving at almost
every step, so there the second runs out, and such a trial can still be cut.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any

from ray import tune

SAVE_GRACE_SECONDS = 1.0  # the longest a Ctrl-C waits for the checkpoints being saved


def saving(trial) -> bool:
    return trial.status == "RUNNING" and trial.is_saving


class GracefulInterrupt(tune.Callback):
    """Made by Tune from its callbacks variable (no arguments); see the module's text."""

    def __init__(self):
        self.tune_handler = None    # Tune's SIGINT handler, wrapped while the search runs
        self.requested_at = None    # when a Ctrl-C came, not yet handed on
        self.handed_over = False

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the search
        return {**self.__dict__, "tune_handler": None, "requested_at": None}

    def on_step_begin(self, iteration, trials, **info) -> None:
        # Tune installs its handler when the run starts, before its first step
        if self.tune_handler is not None or self.handed_over or threading.current_thread() is not threading.main_thread():
            return
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            self.tune_handler = handler
            signal.signal(signal.SIGINT, self._defer)

    def _defer(self, signum, frame) -> None:
        if self.requested_at is not None:  # a second Ctrl-C: no more waiting
            self._hand_over()
            return
        self.requested_at = time.monotonic()
        print(f"Ctrl-C: the search stops once the checkpoints being saved are in (at most {SAVE_GRACE_SECONDS:g} s; "
              f"Ctrl-C again: now)", flush=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.requested_at is None:
            return
        if time.monotonic() - self.requested_at >= SAVE_GRACE_SECONDS or not any(map(saving, trials)):
            self._hand_over()

    def _hand_over(self) -> None:
        handler, self.tune_handler, self.requested_at, self.handed_over = self.tune_handler, None, None, True
        signal.signal(signal.SIGINT, handler)
        handler(signal.SIGINT, None)  # Tune's: the search ends after this step, its state saved

    def on_experiment_end(self, trials, **info) -> None:
        if self.tune_handler is not None and signal.getsignal(signal.SIGINT) == self._defer:
            signal.signal(signal.SIGINT, self.tune_handler)
        self.tune_handler = None
