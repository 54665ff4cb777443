"""tune.py's search space: Tune domains over config keys (lr, patience and schedule are required)."""
from ray import tune

MAX_ITERATIONS = 20  # epochs per trial unless --set max_iterations=...


def space() -> dict:
    return {
        "lr": tune.loguniform(3e-4, 3e-2),
        "patience": tune.choice([3, 5]),
        "schedule": tune.choice(["none", "cosine"]),
        "hidden": tune.choice([32, 64, 128]),
        "weight_decay": tune.loguniform(1e-6, 1e-2),
    }
