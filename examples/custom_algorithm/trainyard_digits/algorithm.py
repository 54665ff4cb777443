"""The registry entry: trainer, config and search space (pyproject.toml points here)."""
from trainers.registry import Algorithm

from trainyard_digits.config import DigitsMlpConfig

DIGITS_MLP = Algorithm(
    trainer="trainyard_digits.trainer:DigitsMlpTrainer",  # imported only when a run starts
    config=DigitsMlpConfig,
    search_space="trainyard_digits.space",
)
