"""Self-play throughput inside the real training loop: `ppo-shogi` with N Ray self-play actors
(collection overlapping the update, evaluation on its own actors), against N times the rate of
one actor playing alone (the same actor class, the same config, no learner).

    python benchmarks/selfplay_loop.py [--actors 1,4,8,12] [--iterations 12] [--device cuda]
        [--eval-actors 3] [--set KEY=VALUE ...] [--out FILE]

Per N: plies per second over iterations 3 .. last - 1 (the first two start the actors and fill
the pipeline, the last waits for the evaluations in flight), `efficiency` = that / (N x the standalone rate) (goal >= 0.70 at N = 12), and the
learner's idle share: the part of the wall time it spends waiting in collect() for batches.
Writes benchmarks/results/selfplay_loop.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def standalone_rate(config, calls: int = 4) -> dict:
    """One SelfPlayActor alone: plies per second over `calls` collections after one warm-up."""
    import ray

    from distributed.selfplay import SelfPlayActor
    from trainers.selfplay.network import ActorCritic

    weights = ray.put(ActorCritic(config.blocks, config.channels).state_dict())
    actor = ray.remote(SelfPlayActor).options(num_cpus=config.actor_cpus).remote(config.model_dump(), 0)
    share = config.rollout_plies
    ray.get(actor.play.remote(weights, share, 0, None, 0))
    started = time.perf_counter()
    plies = 0
    for call in range(1, calls + 1):
        _, batch = ray.get(actor.play.remote(weights, share, call, None, call))
        plies += batch.stats["plies"]
    seconds = time.perf_counter() - started
    ray.kill(actor)
    return {"plies_per_second": plies / seconds, "seconds": seconds, "plies": plies}


def loop_rate(config, device: str, iterations: int) -> dict:
    from trainers.context import LocalContext
    from trainers.selfplay.trainer import PpoShogiTrainer

    folder = Path(tempfile.mkdtemp(prefix="trainyard-selfplay-loop-"))
    trainer = PpoShogiTrainer(config, LocalContext("ppo-shogi", folder, device=device, resume=False))
    result = trainer.fit()
    # iterations 3 .. last - 1: the first waits for its evaluation and starts the pipeline, the
    # last waits for every evaluation still being played
    rows = result.history[2:-1]
    wall = rows[-1]["elapsed_seconds"] - result.history[1]["elapsed_seconds"]
    plies = rows[-1]["total_plies"] - result.history[1]["total_plies"]
    actors = config.actors

    def delta(key: str) -> float:
        """A cumulative source counter's growth over the measured iterations."""
        return rows[-1][f"source_{key}"] - result.history[1][f"source_{key}"]

    def actor_share(key: str) -> float:
        """Share of the actors' wall time (N x wall) their batches report in `key`."""
        return delta(key) / (actors * wall)

    batches = delta("batches")
    return {"actor_call_share": actor_share("actor_call_seconds"),     # inside play()
            "actor_idle_share": actor_share("actor_idle_seconds"),     # between calls
            "actor_playing_share": actor_share("actor_games_seconds"),    # the runner's game loop
            "actor_network_share": actor_share("actor_network_seconds"),
            "actor_call_seconds_mean": delta("actor_call_seconds") / max(batches, 1),
            "plies_per_call": plies / max(batches, 1),
            "iterations": len(result.history), "plies_per_second": plies / wall, "wall_seconds": wall,
            "learner_idle_fraction": sum(r["collect_seconds"] for r in rows) / wall,
            "update_seconds_median": statistics.median(r["update_seconds"] for r in rows),
            "iteration_seconds_median": statistics.median(r["iteration_seconds"] for r in rows),
            "policy_lag": [r["source_policy_lag"] for r in result.history]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", default="1,4,8,12")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--eval-actors", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(RESULTS / "selfplay_loop.json"))
    args = parser.parse_args()
    import ray
    import torch

    import distributed.selfplay  # noqa: F401  registers collector "ray"
    from trainers.config import build_config, overrides_from_sets
    from trainers.selfplay.config import PpoShogiConfig

    torch.set_num_threads(2)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    counts = [int(n) for n in args.actors.split(",")]
    base = overrides_from_sets(args.set)
    one = build_config(PpoShogiConfig, {**base, "collector": "ray", "actors": 1})
    alone = standalone_rate(one)
    print(f"one actor alone: {alone['plies_per_second']:.0f} plies/s")
    rows = []
    report = {"machine": f"{platform.node()}: {os.cpu_count()} CPUs"
              + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
              "device": args.device, "sets": args.set, "eval_actors": args.eval_actors, "standalone": alone,
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in counts:
        config = build_config(PpoShogiConfig, {**base, "collector": "ray", "actors": n,
                                               "eval_actors": args.eval_actors, "max_iterations": args.iterations,
                                               "final_eval_games": 0, "checkpoint_every": args.iterations})
        row = {"actors": n, **loop_rate(config, args.device, args.iterations)}
        row["efficiency"] = row["plies_per_second"] / (n * alone["plies_per_second"])
        rows.append(row)
        out.write_text(json.dumps(report, indent=2))   # after every N: a cut-short run keeps what it measured
        print(f"N={n:>3}: {row['plies_per_second']:>8.0f} plies/s in the loop = {row['efficiency']:.2f} x N x alone; "
              f"learner idle {row['learner_idle_fraction']:.2f}; update {row['update_seconds_median']:.2f} s, "
              f"iteration {row['iteration_seconds_median']:.2f} s; actors' time: in play() "
              f"{row['actor_call_share']:.2f} (games {row['actor_playing_share']:.2f}), between calls "
              f"{row['actor_idle_share']:.2f}; {row['plies_per_call']:.0f} plies, "
              f"{row['actor_call_seconds_mean']:.3f} s a call", flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
