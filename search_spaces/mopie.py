"""Search space of `mopie`: metric `residual` (mode min), the relative L1 misfit of every measured
intensity, the same measure in every trial (a data measure: the truth's test_ssim is only reported).

`lr` is the object step alpha (the schedule drives it); `beta` acts only with learn_probe.
An epoch of the default problem (moon 128 px in a 256 grid, 193 apertures of 41 px) takes
about 0.01 s on one CPU thread: a trial's time is Ray's, not the engine's.
"""
from ray import tune

MAX_ITERATIONS = 15
# the GPU share of a trial under tune.py --gpus-per-worker auto: measured on an H200: a default
# trial uses a few percent of it; 4 per GPU ran 1.27x the trials/min of 1
GPU_SHARE = 0.25


def space() -> dict:
    return {
        "lr": tune.uniform(0.3, 1.5),
        "patience": tune.choice([3, 5]),
        "schedule": tune.choice(["none", "step", "cosine"]),
        "beta": tune.uniform(0.2, 1.0),
        "momentum": tune.choice([0.0, 0.3, 0.5, 0.7]),
        "batch_size": tune.choice([8, 16, 32, 64]),
        "constrain_every": tune.choice([0, 1, 4]),
    }
