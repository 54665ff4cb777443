"""The config: trainyard's shared keys (lr, patience, schedule, seed, max_iterations, metric...)
plus this algorithm's own, validated at the command line before Ray starts (no torch here)."""
from pydantic import Field

from trainers.config import Mode, TrainerConfig


class DigitsMlpConfig(TrainerConfig):
    lr: float = Field(3e-3, gt=0, le=1, description="Adam learning rate")
    max_iterations: int = Field(30, ge=1, le=10_000, description="epochs")
    patience: int = Field(5, ge=0, le=10_000)
    metric: str = "val_acc"     # early stopping, best state, checkpoint ranking and Tune read this
    mode: Mode = "max"
    hidden: int = Field(64, ge=1, le=4096, description="units of the hidden layer")
    dropout: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    batch_size: int = Field(64, ge=1, le=100_000, description="examples per step on each worker")
    val_frac: float = Field(0.2, gt=0, lt=0.5, description="share of the images held out for validation")
    test_frac: float = Field(0.2, gt=0, lt=0.5, description="share held out for the final test")
