"""Ctrl-C during a search without losing a finished trial.

A trial's last report carries its final checkpoint. Tune processes that report (the trial's
result files then say it is done) and asks the trial's actor to save the checkpoint; it marks the
trial TERMINATED only when that save comes back. Tune's own Ctrl-C handler ends the search after
the step in progress, so a Ctrl-C that lands between the two saves the trial as still running,
and `--resume` runs it again from an older checkpoint. In a search of many short trials a trial
is in that window at almost any moment (one in every interrupted 1,000-trial search on 16 CPUs).

GracefulInterrupt sits between the signal and Tune's handler: it hands a Ctrl-C on at the end of
the first step in which no trial is saving a checkpoint, or, after a short grace, no trial is
saving its final one; after a longer bound, or at a second Ctrl-C, it hands it on at once.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any

from ray import tune

# every checkpoint being saved is waited for this long; a finished trial's final one for longer
ANY_SAVE_GRACE_SECONDS = 1.0
FINAL_SAVE_BOUND_SECONDS = 10.0


def saving(trial) -> bool:
    return trial.status == "RUNNING" and trial.is_saving


def saving_final(trial) -> bool:
    """A running trial whose final report Tune has processed: its checkpoint is being saved."""
    return trial.status == "RUNNING" and bool((trial.last_result or {}).get("done"))


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
        print("Ctrl-C: the search stops once the checkpoints being saved are in (Ctrl-C again: now)", flush=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.requested_at is None:
            return
        waited = time.monotonic() - self.requested_at
        if (waited >= FINAL_SAVE_BOUND_SECONDS
                or not any(saving_final(trial) for trial in trials)
                and (waited >= ANY_SAVE_GRACE_SECONDS or not any(saving(trial) for trial in trials))):
            self._hand_over()

    def _hand_over(self) -> None:
        handler, self.tune_handler, self.requested_at, self.handed_over = self.tune_handler, None, None, True
        signal.signal(signal.SIGINT, handler)
        handler(signal.SIGINT, None)  # Tune's: the search ends after this step, its state saved

    def on_experiment_end(self, trials, **info) -> None:
        if self.tune_handler is not None and signal.getsignal(signal.SIGINT) == self._defer:
            signal.signal(signal.SIGINT, self.tune_handler)
        self.tune_handler = None
