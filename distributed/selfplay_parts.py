"""ppo-shogi's own Ray parts, declared through its registry entry (`ray_parts`): the self-play
actors of `collector=ray` (with `inference=server`, one inference actor per learner; with one
learner, `eval_actors` evaluation actors), which
the learner starts beside itself. run.py and tune.py plan their CPUs and GPUs from `plan`; every
Ray worker calls `prepare_worker` before building the trainer, which registers the Ray source."""
from __future__ import annotations

from distributed.resources import RayParts, ResourceError


class SelfPlayActors:
    def plan(self, config, workers: int, gpus_per_worker: float) -> RayParts | None:
        if config.collector != "ray":
            return None
        if config.actors < workers:
            raise ResourceError(f"--actors {config.actors} is fewer than --workers {workers}: each learner owns "
                                f"its own actors")
        servers = workers if config.inference == "server" else 0
        # evaluation actors play the ladder beside a single learner (several learners evaluate in-process)
        evaluators = config.eval_actors if workers == 1 else 0
        request = f"--actors {config.actors} x actor_cpus {config.actor_cpus:g}" + (
            f" + {servers} inference actor(s)" if servers else "") + (
            f" + {evaluators} evaluation actor(s) (eval_actors)" if evaluators else "")
        return RayParts(actors=config.actors + servers + evaluators, cpus_per_actor=config.actor_cpus,
                        gpus=servers * config.inference_gpus if servers and gpus_per_worker > 0 else 0.0,
                        label="self-play actor", request=request,
                        hint="use fewer --actors or --set actor_cpus={fits}"
                        if servers == 0 else "use fewer --actors, a smaller actor_cpus or inference_gpus")

    def prepare_worker(self, config) -> None:
        if config.collector == "ray":
            import distributed.selfplay  # noqa: F401  registers collector "ray"

    def actor_settings(self, actors: int) -> list[str]:
        return ["collector=ray", f"actors={actors}"]


SELF_PLAY_ACTORS = SelfPlayActors()
