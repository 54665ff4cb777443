"""Search space of `gat-simple`: early stopping here watches the training loss."""
from ray import tune

MAX_ITERATIONS = 10
# the GPU share of a trial under tune.py --gpus-per-worker auto: the graph and its embeddings fill
# more of a GPU (not measured alone)
GPU_SHARE = 0.5


def space() -> dict:
    return {
        "lr": tune.loguniform(1e-3, 3e-2),
        "patience": tune.choice([2, 4]),
        "schedule": tune.choice(["none", "cosine", "step"]),
        "embedding_dim": tune.choice([32, 64]),
        "dropout": tune.uniform(0.0, 0.3),
        "weight_decay": tune.loguniform(1e-6, 1e-3),
    }
