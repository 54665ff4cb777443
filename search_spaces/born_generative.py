"""Search space of `born-generative`: metric is the validation joint NLL -log p(x, c) (mode min)."""
from ray import tune

MAX_ITERATIONS = 30
# the GPU share of a trial under tune.py --gpus-per-worker auto: a small MPS: a small part of a GPU
# (not measured alone)
GPU_SHARE = 0.25


def space() -> dict:
    return {
        "lr": tune.loguniform(1e-3, 1e-2),
        "patience": tune.choice([5, 10, 15]),
        "schedule": tune.choice(["none", "cosine", "plateau"]),
        "bond_dim": tune.choice([4, 6, 8, 12]),
        "feature_dim": tune.choice([8, 12, 16, 20]),
        "mix": tune.choice([0.5, 0.8, 1.0]),
        "norm_control": tune.choice(["none", "penalty", "rescale"]),
    }
