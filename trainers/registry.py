"""Algorithm name -> trainer class, config class, default metric and mode.

Config classes import no torch, so the command line validates instantly; the trainer class is
imported only when a run starts (torch-geometric, cshogi... are optional extras).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from trainers.bornmachine.config import BornAdversarialConfig, BornClassifyConfig, BornGanConfig, BornGenerativeConfig
from trainers.config import TrainerConfig
from trainers.imaging.mopie_config import MopieConfig
from trainers.imaging.prism_config import PrismConfig
from trainers.recommender.config import GatAdvancedConfig, GatSimpleConfig
from trainers.selfplay.config import PpoShogiConfig


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    family: str
    trainer_path: str            # "module:Class", imported lazily
    config_class: type[TrainerConfig]
    description: str
    extra: str                   # the pip extra that holds its dependencies

    @property
    def metric(self) -> str:
        return self.config_class.model_fields["metric"].default

    @property
    def mode(self) -> str:
        return self.config_class.model_fields["mode"].default

    def trainer_class(self):
        module_name, _, class_name = self.trainer_path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ImportError(
                f"algorithm {self.name!r} needs the '{self.extra}' extra: pip install -e '.[{self.extra}]' ({error})"
            ) from error
        return getattr(module, class_name)


ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec("gat-simple", "recommender", "trainers.recommender.trainers:GatSimpleTrainer",
                      GatSimpleConfig, "GAT recommender, all edges, fixed LR, in-sample metrics", "graph"),
        AlgorithmSpec("gat-advanced", "recommender", "trainers.recommender.trainers:GatAdvancedTrainer",
                      GatAdvancedConfig, "GAT recommender, temporal split, early stopping, LR schedule, "
                      "test metrics on the best model", "graph"),
        AlgorithmSpec("mopie", "imaging", "trainers.imaging.mopie:MopieTrainer", MopieConfig,
                      "batched ePIE/mPIE synthetic-aperture reconstruction with a known pupil", "imaging"),
        AlgorithmSpec("prism", "imaging", "trainers.imaging.prism:PrismTrainer", PrismConfig,
                      "progressive deep-decoder synthetic-aperture reconstruction, one sample per iteration",
                      "imaging"),
        AlgorithmSpec("born-classify", "bornmachine", "trainers.bornmachine.trainers:BornClassifyTrainer",
                      BornClassifyConfig, "MPS Born machine classifier: NLL of p(c|x), early stopping, "
                      "test metrics on the best weights", "born"),
        AlgorithmSpec("born-generative", "bornmachine", "trainers.bornmachine.trainers:BornGenerativeTrainer",
                      BornGenerativeConfig, "MPS Born machine generator: joint NLL -log p(x,c) with the exact "
                      "partition function", "born"),
        AlgorithmSpec("born-gan", "bornmachine", "trainers.bornmachine.gan:BornGanTrainer", BornGanConfig,
                      "Born machine sharpened against a class-aware critic, classifier retrained on accuracy "
                      "drops", "born"),
        AlgorithmSpec("born-adversarial", "bornmachine", "trainers.bornmachine.adversarial:BornAdversarialTrainer",
                      BornAdversarialConfig, "Born machine adversarial training (PGD-AT or TRADES), early "
                      "stopping on robust accuracy", "born"),
        AlgorithmSpec("ppo-shogi", "selfplay", "trainers.selfplay.trainer:PpoShogiTrainer", PpoShogiConfig,
                      "PPO self-play for shogi: lockstep batched self-play, per-player GAE, opponent pool, Elo",
                      "shogi"),
    )
}


class UnknownAlgorithm(KeyError):
    def __str__(self) -> str:
        return f"unknown algorithm {self.args[0]!r}; choose one of: {', '.join(ALGORITHMS)}"


def get_algorithm(name: str) -> AlgorithmSpec:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise UnknownAlgorithm(name) from None


def build_trainer(name: str, config: TrainerConfig, context):
    return get_algorithm(name).trainer_class()(config, context)
