"""The functions Tune runs as a search's trials, in a module that imports nothing at its top.

Tune's actor for a trial imports the module of the trial's function when it starts. Had that
been distributed.tune (Ray Tune, torch, pydantic, pandas: seconds for each of 16 processes
starting at once), a search of short trials would run on a few of its actors only: Tune hands a
pending trial the first actor that frees up and cancels the one still starting for it, so actors
that take seconds to start are cancelled before they ever run a trial (4 busy processes of 16
were seen on 16 cores). The trainer's imports now come with each process's first trial, as a
PyTorch trainable's own do.
"""
from __future__ import annotations

from typing import Any


def inline_trial(trial_config: dict[str, Any], **fixed: Any) -> None:
    """A one-worker trial in the trial's own process (distributed.tune.run_inline_trial)."""
    from distributed.tune import run_inline_trial

    run_inline_trial(trial_config, **fixed)


def train_trial(trial_config: dict[str, Any], **fixed: Any) -> None:
    """A trial that launches a TorchTrainer (distributed.tune.run_train_trial)."""
    from distributed.tune import run_train_trial

    run_train_trial(trial_config, **fixed)
