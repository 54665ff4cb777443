"""Search space of `prism`: metric `val_loss` (mode min), the relative L1 error of the held-out
apertures' intensities: the same measure whatever a trial's training `loss` (the truth's
test_ssim is only reported).

One iteration adds one aperture; on the default problem (moon 128 px in a 256 grid, 36
apertures of 51 px) a sample takes 1-4 s on one CPU thread (all apertures so far are refitted),
so a trial is capped at 12 samples.
`lr` is Adam's step, `schedule` the inner per-sample schedule; `patience` counts samples.
"""
from ray import tune

MAX_ITERATIONS = 12
# the GPU share of a trial under tune.py --gpus-per-worker auto: a 256-grid decoder: a small part of
# a GPU (not measured alone)
GPU_SHARE = 0.25


def space() -> dict:
    return {
        "lr": tune.loguniform(1e-3, 2e-2),
        "patience": tune.choice([0, 5]),
        "schedule": tune.choice(["none", "plateau", "cosine_warm_restarts"]),
        "loss": tune.choice(["l1", "l2", "ssim"]),
        "steps_per_sample": tune.choice([30, 60, 100]),
    }
