"""Check what a run asks for against what the cluster has, before asking Ray for it.

Ray would otherwise wait (for an autoscaler that may not exist) and the user sees a hang.
"""
from __future__ import annotations

from dataclasses import dataclass


class ResourceError(RuntimeError):
    """The request cannot be met by this cluster; the message says what it has."""


def cluster_totals() -> tuple[float, float]:
    import ray

    resources = ray.cluster_resources()
    return float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))


def check_local_gpus(gpus_per_worker: float) -> None:
    """Fail at once, before starting Ray, when GPUs are asked for on a machine with none."""
    if gpus_per_worker <= 0:
        return
    import torch

    if not torch.cuda.is_available():
        raise ResourceError(
            f"--gpus-per-worker {gpus_per_worker:g} asks for GPUs, but this machine has none "
            "(torch.cuda.is_available() is False); drop the flag to train on CPUs"
        )


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float


def plan_workers(workers: int, gpus_per_worker: float, cpus: float, gpus: float,
                 reserved_cpus: float = 0.0) -> WorkerPlan:
    """One CPU per worker where it fits; on a small machine the workers share what is left.

    `reserved_cpus` is held by something else that runs beside the workers (a Tune trial's
    driver): on 2 CPUs with a 0.01-CPU driver, two workers get 0.99 CPU each, not a deadlock.
    """
    if gpus_per_worker > 0 and workers * gpus_per_worker > gpus + 1e-9:
        raise ResourceError(
            f"{workers} worker(s) x {gpus_per_worker:g} GPU need {workers * gpus_per_worker:g} GPUs; "
            f"the cluster has {gpus:g}"
        )
    free = cpus - reserved_cpus
    if free >= workers:
        return WorkerPlan(workers, 1.0, gpus_per_worker)
    share = int(free / workers * 100) / 100  # round down to 0.01 so the sum never exceeds free
    if share < 0.1:
        raise ResourceError(
            f"{workers} worker(s) need at least {workers * 0.1:g} CPUs; the cluster has {cpus:g} "
            f"({reserved_cpus:g} reserved)"
        )
    return WorkerPlan(workers, share, gpus_per_worker)
