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


@dataclass(frozen=True)
class RayParts:
    """Ray actors an algorithm starts itself beside its learner workers (outside their resources).

    An algorithm declares them through the `ray_parts` hook of its registry entry: an object with
    `plan(config, workers, gpus_per_worker) -> RayParts | None` (None: none for this config; it
    may raise ResourceError for a request that cannot work), optionally `prepare_worker(config)`,
    called in every Ray worker before the trainer is built (to register a Ray-side source), and
    optionally `actor_settings(n) -> list[str]`, the `--set` pairs that `run.py --actors N` means.
    """

    actors: int                # actors started beside one learner group (one run, one trial)
    cpus_per_actor: float
    gpus: float = 0.0          # GPUs they hold in all
    label: str = "actor"       # what one is, for messages ("data-collecting actor")
    request: str = ""          # how the user asked for them, for messages ("--actors 2 x actor_cpus 1")
    hint: str = ""             # how to make them fit, added to the error; {fits}: CPUs per actor that fit

    @property
    def cpus(self) -> float:
        return self.actors * self.cpus_per_actor

    def describe(self) -> str:
        return self.request or f"{self.actors} {self.label}(s) x {self.cpus_per_actor:g} CPU" + (
            f" + {self.gpus:g} GPU" if self.gpus else "")


def plan_with_parts(workers: int, gpus_per_worker: float, cpus: float, gpus: float, parts: RayParts | None,
                    largest_node: float | None = None) -> WorkerPlan:
    """Learner workers beside an algorithm's own Ray actors.

    The actors get their CPUs each (they work at the same time); the learners get what is left,
    1 CPU each where it fits, else a fraction (at least 0.1): where the learner waits while the
    actors work and the other way round (synchronous collection), a fractional learner slows
    neither down. On 2 CPUs, 2 actors x 0.5 CPU leave the learner a whole CPU.
    """
    if parts is None:
        return plan_workers(workers, gpus_per_worker, cpus, gpus)
    if largest_node is not None and parts.cpus_per_actor > largest_node + 1e-9:
        raise ResourceError(f"{parts.label}s of {parts.cpus_per_actor:g} CPU each: no node has that many CPUs "
                            f"(the largest has {largest_node:g})")
    if parts.gpus and parts.gpus + workers * gpus_per_worker > gpus + 1e-9:
        raise ResourceError(f"{workers} learner(s) x {gpus_per_worker:g} GPU plus {parts.describe()} need "
                            f"{parts.gpus + workers * gpus_per_worker:g} GPUs; the cluster has {gpus:g}"
                            + (f" ({parts.hint.format(fits='?')})" if parts.hint else ""))
    if parts.cpus + workers * MIN_LEARNER_CPUS > cpus + 1e-9:
        # the suggestion leaves each learner a whole CPU where the cluster has one for it
        spare = cpus - workers if cpus > workers else cpus - workers * MIN_LEARNER_CPUS
        fits = int(spare / parts.actors * 100) / 100
        raise ResourceError(f"{parts.describe()} = {parts.cpus:g} CPUs, plus {workers} learner(s) x at least "
                            f"{MIN_LEARNER_CPUS:g} CPU, do not fit the cluster's {cpus:g} CPUs"
                            + (f": {parts.hint.format(fits=fits)}" if parts.hint else ""))
    return plan_workers(workers, gpus_per_worker, cpus, gpus - parts.gpus, reserved_cpus=parts.cpus)


def ray_parts_of(spec, config, workers: int, gpus_per_worker: float) -> RayParts | None:
    """The algorithm's own Ray actors for this config (None: it has none), from its registry hook."""
    hook = spec.ray_parts()
    return None if hook is None else hook.plan(config, workers, gpus_per_worker)


def prepare_ray_worker(spec, config) -> None:
    """Inside a Ray worker, before the trainer is built: the hook's Ray-side setup (a source)."""
    hook = spec.ray_parts()
    if hook is not None and hasattr(hook, "prepare_worker"):
        hook.prepare_worker(config)
