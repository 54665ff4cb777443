"""Search space of `born-gan`: metric is the validation per-class Frechet distance (mode min).

Each trial pre-trains its own classifier first (a few seconds on two-moons) unless
classifier_checkpoint is fixed with --set, which makes the trials compare GAN settings only.
"""
from ray import tune

MAX_ITERATIONS = 10
# the GPU share of a trial under tune.py --gpus-per-worker auto: a small MPS and critic: a small
# part of a GPU (not measured alone)
GPU_SHARE = 0.25


def space() -> dict:
    return {
        "lr": tune.loguniform(5e-4, 5e-3),
        "patience": tune.choice([3, 5]),
        "schedule": tune.choice(["none", "cosine"]),
        "bond_dim": tune.choice([6, 10]),
        "feature_dim": tune.choice([8, 12]),
        "critic_steps": tune.choice([1, 5, 10]),
        "critic_lr": tune.loguniform(3e-4, 3e-3),
        "tolerance": tune.choice([0.02, 0.05, 0.1]),
        "gan_loss": tune.choice(["bce", "wgan-gp"]),
    }
