"""Search space of `born-adversarial`: metric is validation PGD accuracy at `epsilon` (mode max).

On digits an epoch of PGD-AT (10 attack steps) takes a few seconds on one CPU thread.
"""
from ray import tune

MAX_ITERATIONS = 20
# the GPU share of a trial under tune.py --gpus-per-worker auto: a small MPS: a small part of a GPU
# (not measured alone)
GPU_SHARE = 0.25


def space() -> dict:
    return {
        "lr": tune.loguniform(5e-4, 5e-3),
        "patience": tune.choice([5, 10]),
        "schedule": tune.choice(["none", "cosine"]),
        "bond_dim": tune.choice([8, 10, 16]),
        "feature_dim": tune.choice([2, 3, 4]),
        "method": tune.choice(["pgd-at", "trades"]),
        "epsilon": tune.choice([0.1]),
        "beta": tune.uniform(1.0, 8.0),
        "clean_weight": tune.uniform(0.0, 0.5),
        "curriculum_epochs": tune.choice([0, 5]),
    }
