"""Reading a `born-classify` checkpoint as the starting point of another Born-machine trainer."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainers.checkpoint import CheckpointError, load_checkpoint
from trainers.config import ConfigError

if TYPE_CHECKING:  # config.py imports this module (lazily) to check the file: no import back
    from trainers.bornmachine.config import BornConfig

CLASSIFIER = "born-classify"


def read_classifier_checkpoint(config: BornConfig) -> dict[str, torch.Tensor]:
    """The classifier's best weights (weights_only load); ConfigError when the file is missing,
    was written by another algorithm, or was trained on other data or another model shape."""
    path = config.classifier_checkpoint
    try:
        payload = load_checkpoint(path, CLASSIFIER)
    except CheckpointError as error:
        raise ConfigError(f"classifier_checkpoint = {path!r}: {error}") from None
    differing = config.mismatched_keys(payload.get("config", {}))
    if differing:
        shown = ", ".join(f"{key} {payload['config'][key]!r} (here {getattr(config, key)!r})" for key in differing)
        raise ConfigError(f"classifier_checkpoint = {path!r}: trained with other data/model settings: {shown}")
    trainer: dict[str, Any] = payload["trainer"]
    # a finished run's "model" is already its best state; a run cut short still has "best_state"
    return trainer["model"] if trainer.get("finished") or not trainer.get("best_state") else trainer["best_state"]
