"""Search space of `ppo-shogi`: metric is the ladder score (the sum of the score rates against
the opponent ladder, mode max), measured every `eval_every` iterations on `eval_games` games per
rung (early stopping counts iterations).

An iteration (4,096 learner moves, 3 epochs, 3 x 32 network) takes about 6-12 s on two CPU cores,
so a trial of 40 iterations is 5-8 minutes; evaluation every 5 iterations gives patience a
meaning at that length. The short learning checks behind the defaults: gae_lambda 0.8 clearly
beat 0.95 and 0.7; lr between 3e-4 and 1e-3 worked, 3e-3 did not.
"""
from ray import tune

MAX_ITERATIONS = 40
# the GPU share of a trial under tune.py --gpus-per-worker auto: self-play and the learner's big
# minibatches: a whole GPU
GPU_SHARE = 1.0


def space() -> dict:
    return {
        "lr": tune.loguniform(2e-4, 2e-3),
        "patience": tune.choice([10, 20]),
        "schedule": tune.choice(["none", "cosine"]),
        "clip_coef": tune.choice([0.1, 0.2, 0.3]),
        "ent_coef": tune.loguniform(1e-3, 2e-2),
        "gae_lambda": tune.uniform(0.7, 0.95),
        "rollout_plies": tune.choice([2048, 4096, 8192]),
        "eval_every": 5,
    }
