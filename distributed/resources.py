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


def largest_node_cpus() -> float:
    import ray

    return max((float(node["Resources"].get("CPU", 0.0)) for node in ray.nodes() if node.get("Alive")), default=0.0)


MIN_LEARNER_CPUS = 0.1


def plan_with_actors(workers: int, gpus_per_worker: float, cpus: float, gpus: float, *, actors: int,
                     actor_cpus: float, servers: int = 0, server_gpus: float = 0.0,
                     largest_node: float | None = None, evaluators: int = 0) -> WorkerPlan:
    """Learner workers beside `actors` self-play actors (and `servers` inference actors, one per
    learner, each holding `actor_cpus` and `server_gpus`, and `evaluators` evaluation actors of
    `actor_cpus` each).

    The actors get `actor_cpus` each: they play at the same time. The learners get what is left,
    1 CPU each where it fits, else a fraction (at least 0.1): PPO here is synchronous, the learner
    waits while the actors play and the actors wait while it updates, so a fractional learner
    does not slow either down. On 2 CPUs, 2 actors x 0.5 CPU leave the learner a whole CPU.
    """
    if actors < workers:
        raise ResourceError(f"--actors {actors} is fewer than --workers {workers}: each learner owns its own actors")
    if largest_node is not None and actor_cpus > largest_node + 1e-9:
        raise ResourceError(f"actor_cpus {actor_cpus:g}: no node has that many CPUs (the largest has {largest_node:g})")
    held_gpus = servers * server_gpus
    if held_gpus and held_gpus + workers * gpus_per_worker > gpus + 1e-9:
        raise ResourceError(f"{workers} learner(s) x {gpus_per_worker:g} GPU plus {servers} inference actor(s) x "
                            f"{server_gpus:g} GPU need {held_gpus + workers * gpus_per_worker:g} GPUs; the cluster "
                            f"has {gpus:g} (share one GPU with fractions: --set inference_gpus=...)")
    held = (actors + servers + evaluators) * actor_cpus
    if held + workers * MIN_LEARNER_CPUS > cpus + 1e-9:
        # the suggestion leaves each learner a whole CPU where the cluster has one for it
        spare = cpus - workers if cpus > workers else cpus - workers * MIN_LEARNER_CPUS
        fits = spare / (actors + servers + evaluators)
        hint = f" or --set actor_cpus={int(fits * 100) / 100:g}" if fits >= 0.01 else ""
        raise ResourceError(f"--actors {actors} x actor_cpus {actor_cpus:g}"
                            f"{f' + {servers} inference actor(s)' if servers else ''}"
                            f"{f' + {evaluators} evaluation actor(s) (eval_actors)' if evaluators else ''} = {held:g} CPUs, plus "
                            f"{workers} learner(s) x at least {MIN_LEARNER_CPUS:g} CPU, do not fit the cluster's "
                            f"{cpus:g} CPUs: use fewer --actors{hint}")
    return plan_workers(workers, gpus_per_worker, cpus, gpus - held_gpus, reserved_cpus=held)
