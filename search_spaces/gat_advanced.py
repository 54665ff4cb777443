"""Search space of `gat-advanced`: metric is validation Recall@20 (mode max)."""
from ray import tune

MAX_ITERATIONS = 20
# the GPU share of a trial under tune.py --gpus-per-worker auto: the graph and its embeddings fill
# more of a GPU (not measured alone)
GPU_SHARE = 0.5


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
        "prior_weight": tune.choice([1.0, 3.0, 10.0, 30.0]),
    }
