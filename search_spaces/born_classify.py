"""Search space of `born-classify`: metric is the validation classification NLL (mode min).

An epoch on the default two-moons data takes about 0.03 s on one CPU thread; 30 epochs keep a
search of 8 trials well under a minute of compute.
"""
from ray import tune

MAX_ITERATIONS = 30
# the GPU share of a trial under tune.py --gpus-per-worker auto: a small MPS: latency-bound, a small
# part of a GPU (not measured alone)
GPU_SHARE = 0.25


def space() -> dict:
    return {
        "lr": tune.loguniform(1e-3, 2e-2),
        "patience": tune.choice([5, 10, 15]),
        "schedule": tune.choice(["none", "cosine", "plateau"]),
        "bond_dim": tune.choice([4, 6, 10, 16]),
        "feature_dim": tune.choice([4, 8, 12, 16]),
        "batch_size": tune.choice([32, 64, 128]),
        "grad_clip": tune.choice([0.0, 1.0, 5.0]),
    }
