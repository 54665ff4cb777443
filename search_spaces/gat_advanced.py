"""Search space of `gat-advanced`: metric is validation Recall@20 (mode max)."""
from ray import tune

MAX_ITERATIONS = 20


def space() -> dict:
    return {
        "lr": tune.loguniform(1e-3, 3e-2),
        "patience": tune.choice([3, 5, 8]),
        "schedule": tune.choice(["none", "plateau", "cosine"]),
        "embedding_dim": tune.choice([32, 64]),
        "heads": tune.choice([1, 2, 4]),
        "dropout": tune.uniform(0.0, 0.3),
        "weight_decay": tune.loguniform(1e-6, 1e-3),
        "batch_size": tune.choice([2048, 4096, 8192]),
    }
