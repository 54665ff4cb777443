"""The nine algorithms this project ships, registered like any other package's: pyproject.toml
lists each of these objects under the `trainyard.algorithms` entry-point group."""
from __future__ import annotations

from trainers.bornmachine.config import BornAdversarialConfig, BornClassifyConfig, BornGanConfig, BornGenerativeConfig
from trainers.imaging.mopie_config import MopieConfig
from trainers.imaging.prism_config import PrismConfig
from trainers.recommender.config import GatAdvancedConfig, GatSimpleConfig
from trainers.registry import Algorithm
from trainers.selfplay.config import PpoShogiConfig

# GAT recommender, all edges, fixed LR, in-sample metrics
GAT_SIMPLE = Algorithm("trainers.recommender.trainers:GatSimpleTrainer", GatSimpleConfig,
                       "search_spaces.gat_simple", extra="graph")
# GAT recommender, temporal split, early stopping, LR schedule, test metrics on the best model
GAT_ADVANCED = Algorithm("trainers.recommender.trainers:GatAdvancedTrainer", GatAdvancedConfig,
                         "search_spaces.gat_advanced", extra="graph")
# batched ePIE/mPIE synthetic-aperture reconstruction with a known pupil
MOPIE = Algorithm("trainers.imaging.mopie:MopieTrainer", MopieConfig, "search_spaces.mopie", extra="imaging")
# progressive deep-decoder synthetic-aperture reconstruction, one sample per iteration
PRISM = Algorithm("trainers.imaging.prism:PrismTrainer", PrismConfig, "search_spaces.prism", extra="imaging")
# MPS Born machine classifier: NLL of p(c|x), early stopping, test metrics on the best weights
BORN_CLASSIFY = Algorithm("trainers.bornmachine.trainers:BornClassifyTrainer", BornClassifyConfig,
                          "search_spaces.born_classify", extra="born")
# MPS Born machine generator: joint NLL -log p(x,c) with the exact partition function
BORN_GENERATIVE = Algorithm("trainers.bornmachine.trainers:BornGenerativeTrainer", BornGenerativeConfig,
                            "search_spaces.born_generative", extra="born")
# Born machine sharpened against a class-aware critic, classifier retrained on accuracy drops
BORN_GAN = Algorithm("trainers.bornmachine.gan:BornGanTrainer", BornGanConfig, "search_spaces.born_gan",
                     extra="born")
# Born machine adversarial training (PGD-AT or TRADES), early stopping on robust accuracy
BORN_ADVERSARIAL = Algorithm("trainers.bornmachine.adversarial:BornAdversarialTrainer", BornAdversarialConfig,
                             "search_spaces.born_adversarial", extra="born")
# PPO self-play for shogi: lockstep batched self-play, per-player GAE, opponent pool, Elo; its
# self-play actors on Ray (collector=ray) are its own Ray parts
PPO_SHOGI = Algorithm("trainers.selfplay.trainer:PpoShogiTrainer", PpoShogiConfig, "search_spaces.ppo_shogi",
                      ray_parts="distributed.selfplay_parts:SELF_PLAY_ACTORS", extra="shogi")
