"""Self-play throughput of one actor, and 1 -> 2 Ray actors: the in-process lockstep game runner
(engine, features, masks, sampling, storing, the default network) against the network's own
batched inference rate on the same core (goal: everything but the network costs under 20%, i.e.
ratio >= 0.80), then real Ray actors, 1 against 2 (goal: >= 1.7x on 2 cores).

    python benchmarks/selfplay.py [--plies 4096] [--repeats 3] [--server] [--no-ray]

Single-threaded torch (one actor = one core). Prints a table and writes
benchmarks/results/selfplay.json. The machine is shared and noisy: each figure is the best of
`--repeats` (the least disturbed run), the median is kept beside it.

`measure_source` times any experience source (the object the trainer asks for batches). The
scaling figure uses it on the Ray actor source (distributed/selfplay.py), real Ray actors in
their own processes: 1 actor against 2 actors, each actor asked for `--plies` learner moves per
collection, the two sources' collections interleaved so that a change in the machine's load hits
both alike; per actor = total / actors. The actors report their CPU time too: "cores used" shows
how much of the machine they got, and plies per actor CPU-second, which other jobs on the
machine do not change, gives the speedup on two free cores (2 x the 2-actor rate / the 1-actor
rate). `--server` adds 2 actors with the inference-server path
(on the GPU when there is one; on CPU it only shows what the round trips cost). `--no-ray` skips
the Ray part.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def sample_positions(count: int, seed: int = 0):
    """`count` positions from random games (plies 0-200), encoded: (features, masks)."""
    import numpy as np

    from trainers.selfplay.agents import random_agent
    from trainers.selfplay.game import Game, encode, feature_buffer, mask_buffer

    rng = np.random.default_rng(seed)
    features, masks = feature_buffer(count), mask_buffer(count)
    for i in range(count):
        game = Game(ply_limit=512)
        for _ in range(int(rng.integers(0, 200))):
            if game.push(random_agent([game], rng)[0]) is not None:
                break
        if game.end is not None:
            game = Game()
        encode(game, features[i], masks[i])
    return features, masks


def inference_rate(policy_fn, features, masks, seconds: float = 2.0) -> float:
    """Positions per second of `policy_fn` on one batch, repeated for about `seconds`."""
    for _ in range(3):
        policy_fn(features, masks)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        policy_fn(features, masks)
        calls += 1
    return calls * len(features) / (time.perf_counter() - started)


def measure_source(source, weights, plies: int, repeats: int, opponent=None) -> list[dict]:
    """Time `repeats` collections of about `plies` learner moves from any experience source."""
    runs = []
    for repeat in range(repeats):
        started = time.perf_counter()
        batches = source.collect(weights, plies, seed=1000 + repeat, opponent=opponent)
        wall = time.perf_counter() - started
        played = sum(b.stats["plies"] for b in batches)
        network = sum(b.stats["network_seconds"] for b in batches)
        runs.append({"plies": played, "seconds": wall, "plies_per_second": played / wall,
                     "network_fraction": network / wall, "other_us_per_ply": (wall - network) / played * 1e6,
                     "forwards": sum(b.stats["forwards"] for b in batches),
                     # Ray actors report their CPU time: cores' worth of CPU they got during the collection
                     "cpu_cores_used": sum(b.stats.get("cpu_seconds", float("nan")) for b in batches) / wall,
                     "plies_per_cpu_second": played / sum(b.stats.get("cpu_seconds", float("nan")) for b in batches),
                     "games_finished": sum(b.stats["games"] for b in batches)})
    return runs


def component_costs(games_per_batch: int, count: int = 4000) -> dict:
    """Microseconds per ply of the parts around the network, on random games' positions."""
    import numpy as np

    from trainers.selfplay.agents import random_agent
    from trainers.selfplay.game import Game, encode_batch, feature_buffer, mask_buffer, pack_features, pack_masks

    rng = np.random.default_rng(0)
    positions: list[str] = []
    game = Game(ply_limit=512)
    push_seconds = 0.0
    while len(positions) < count:
        move = random_agent([game], rng)[0]
        started = time.perf_counter()
        end = game.push(move)           # cshogi push + legal moves + repetition bookkeeping
        push_seconds += time.perf_counter() - started
        positions.append(game.board.sfen())
        if end is not None:
            game = Game(ply_limit=512)
    boards = [Game(sfen=sfen) for sfen in positions]
    boards = [board for board in boards if board.legal]
    features, masks = feature_buffer(games_per_batch), mask_buffer(games_per_batch)
    encode_seconds = pack_seconds = 0.0
    for start in range(0, len(boards) - games_per_batch + 1, games_per_batch):
        started = time.perf_counter()
        encode_batch(boards[start:start + games_per_batch], features, masks)  # planes + labels + masks
        encode_seconds += time.perf_counter() - started
        started = time.perf_counter()
        pack_features(features), pack_masks(masks)                            # storage
        pack_seconds += time.perf_counter() - started
    encoded = len(boards) // games_per_batch * games_per_batch
    return {"engine_push_us": push_seconds / count * 1e6, "encode_features_and_mask_us": encode_seconds / encoded * 1e6,
            "pack_for_storage_us": pack_seconds / encoded * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plies", type=int, default=4096, help="learner moves per collection")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray actor scaling (1 vs 2 actors)")
    parser.add_argument("--server", action="store_true", help="also 2 actors through the inference server")
    parser.add_argument("--actor-counts", default="", help="e.g. 8,16,30: also N CPU actors and N actors feeding "
                                                          "one inference server (on the GPU when there is one)")
    parser.add_argument("--out", default=str(RESULTS / "selfplay.json"))
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from trainers.selfplay.config import PpoShogiConfig
    from trainers.selfplay.network import ActorCritic, make_policy_fn
    from trainers.selfplay.sources import InProcessSource

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = PpoShogiConfig()
    network = ActorCritic(config.blocks, config.channels).eval()
    weights = network.state_dict()
    features, masks = sample_positions(config.games_per_batch)
    policy_fn = make_policy_fn(network)
    inference = [inference_rate(policy_fn, features, masks) for _ in range(args.repeats)]
    single = [inference_rate(policy_fn, features[:1], masks[:1], 1.0) for _ in range(args.repeats)]

    source = InProcessSource(config)
    source.collect(weights, config.games_per_batch * 8, seed=0)  # warm-up: buffers, first touch
    self_play = measure_source(source, weights, args.plies, args.repeats)
    # training conditions: new games face the pool snapshot with probability snapshot_prob
    with_pool = measure_source(source, weights, args.plies, args.repeats, opponent=weights)
    components = component_costs(config.games_per_batch)

    best = max(self_play, key=lambda run: run["plies_per_second"])
    best_pool = max(with_pool, key=lambda run: run["plies_per_second"])
    rate = max(inference)
    results = {
        "device": f"{platform.processor() or platform.machine()}, 1 thread (torch.set_num_threads(1)); "
                  "a 2-core machine shared with other jobs",
        "network": {"blocks": config.blocks, "channels": config.channels,
                    "parameters": sum(p.numel() for p in network.parameters())},
        "games_per_batch": config.games_per_batch,
        "inference_positions_per_second": {"best": rate, "median": statistics.median(inference),
                                           "batch": config.games_per_batch},
        "inference_positions_per_second_batch_1": max(single),
        "self_play": {"best": best,
                      "median_plies_per_second": statistics.median(r["plies_per_second"] for r in self_play),
                      "runs": self_play},
        "self_play_with_pool_opponent": {"best": best_pool, "snapshot_prob": config.snapshot_prob, "runs": with_pool},
        "ratio_self_play_to_inference": best["plies_per_second"] / rate,
        "ratio_with_pool_opponent_to_inference": best_pool["plies_per_second"] / rate,
        "goal_ratio": 0.80,
        "component_costs_us_per_ply": components,
    }
    if not args.no_ray:
        counts = [int(n) for n in args.actor_counts.split(",") if n.strip()]
        results["scaling"] = ray_scaling(config, weights, args.plies, args.repeats, args.server, counts)
    previous = Path(args.out)
    previous.parent.mkdir(parents=True, exist_ok=True)
    if previous.is_file():  # keep sections other scripts added (e.g. the learning check, Ray scaling)
        kept = {k: v for k, v in json.loads(previous.read_text()).items() if k not in results}
        results = {**results, **kept}
    previous.write_text(json.dumps(results, indent=2))

    table = Table(title=f"ppo-shogi self-play, one actor, {config.blocks}x{config.channels} network, "
                        f"K = {config.games_per_batch} games")
    for column in ("what", "rate", "ratio to inference"):
        table.add_column(column)
    table.add_row(f"network inference, batch {config.games_per_batch}", f"{rate:,.0f} positions/s", "1.00")
    table.add_row("network inference, batch 1", f"{max(single):,.0f} positions/s", f"{max(single) / rate:.2f}")
    table.add_row("self-play (latest vs latest)", f"{best['plies_per_second']:,.0f} plies/s",
                  f"{best['plies_per_second'] / rate:.2f} (goal >= 0.80)")
    table.add_row(f"self-play, pool opponent in {config.snapshot_prob:.0%} of games",
                  f"{best_pool['plies_per_second']:,.0f} plies/s", f"{best_pool['plies_per_second'] / rate:.2f}")
    table.add_row("outside the network (self-play)", f"{best['other_us_per_ply']:.1f} us/ply",
                  f"network {best['network_fraction']:.0%} of the time")
    table.add_row("  engine push + legal moves", f"{components['engine_push_us']:.1f} us/ply", "")
    table.add_row("  features + legal mask", f"{components['encode_features_and_mask_us']:.1f} us/ply", "")
    table.add_row("  bit-packing for storage", f"{components['pack_for_storage_us']:.1f} us/ply", "")
    Console(width=120).print(table)
    if "actors_1" in results.get("scaling", {}):
        print_scaling(results["scaling"], config)


def ray_sources(config, server: bool, count: int = 0, served: bool = False) -> dict:
    """Real Ray self-play actors: 1 actor and 2 actors (and 2 through the inference server); or,
    with `count` N, N CPU actors, or N actors feeding one server (`served`; GPU if there is one)."""
    import torch

    from distributed.selfplay import RaySource

    # a quarter CPU each, so that every source's actors (and server) can be alive at once on 2 CPUs:
    # the sources collect in turns, so the actors playing at any moment have a core each
    ray_config = config.model_copy(update={"collector": "ray", "actor_cpus": 0.25})
    sources = {}
    if not count:
        sources = {"actors_1": RaySource(ray_config.model_copy(update={"actors": 1})),
                   "actors_2": RaySource(ray_config.model_copy(update={"actors": 2}))}
    if server and not count:
        sources["actors_2_server"] = RaySource(ray_config.model_copy(update={"actors": 2, "inference": "server"}))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if count and not served:
        sources[f"actors_{count}"] = RaySource(ray_config.model_copy(update={"actors": count, "actor_cpus": 1.0}))
    elif count:
        served_config = ray_config.model_copy(update={"actors": count, "actor_cpus": 1.0, "inference": "server"})
        sources[f"actors_{count}_server"] = RaySource(served_config, device=device)
    return sources


def ray_scaling(config, weights, plies: int, repeats: int, server: bool, counts: list[int] = ()) -> dict:
    """Self-play plies per second of 1 and 2 Ray actors, `plies` learner moves per actor per
    collection; collections of the sources interleaved; best of `repeats` each."""
    import os

    import ray

    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    runs: dict[str, list] = {}
    actors: dict[str, int] = {}
    # the small sources first (a quarter CPU each, alive together, collecting in turns),
    # then each N alone, CPU actors and served actors in turn (N actors hold N CPUs)
    groups = [(0, False)] + [(n, served) for n in counts for served in (False, True)]
    try:
        for count, served in groups:
            print(f"starting {'the 1 and 2 actor sources' if not count else f'{count} actors'}"
                  f"{' + inference server' if served else ''}", flush=True)
            sources = ray_sources(config, server, count, served)
            try:
                for name, source in sources.items():  # warm-up: the actors' buffers, first touch
                    actors[name] = len(source.ids)
                    runs[name] = []
                    source.collect(weights, config.games_per_batch * 8 * actors[name], seed=0, opponent=weights)
                for repeat in range(repeats):
                    for name, source in sources.items():
                        runs[name] += measure_source(source, weights, plies * actors[name], 1, opponent=weights)
            finally:
                for source in sources.values():
                    source.close()
    finally:
        ray.shutdown()
    scaling = {}
    for name, measured in runs.items():
        best = max(measured, key=lambda run: run["plies_per_second"])
        scaling[name] = {"actors": actors[name], "best_plies_per_second": best["plies_per_second"],
                         "median_plies_per_second": statistics.median(r["plies_per_second"] for r in measured),
                         "per_actor_plies_per_second": best["plies_per_second"] / actors[name],
                         "cpu_cores_used_best_run": best["cpu_cores_used"], "runs": measured}
    one, two = scaling["actors_1"], scaling["actors_2"]
    scaling["speedup_1_to_2"] = two["best_plies_per_second"] / one["best_plies_per_second"]
    scaling["speedup_1_to_2_median"] = two["median_plies_per_second"] / one["median_plies_per_second"]
    scaling["goal_speedup"] = 1.7
    # what the machine's other load cannot change: work per CPU-second of the actors. Equal rates
    # for 1 and 2 actors mean no overhead from the second one; 2 x their ratio is the speedup
    # on two free cores
    # (not for the server path: its network runs in the server, whose CPU time this does not count)
    per_cpu = {name: statistics.median(r["plies_per_cpu_second"] for r in runs[name])
               for name in ("actors_1", "actors_2")}
    scaling["plies_per_cpu_second_median"] = per_cpu
    scaling["speedup_1_to_2_on_free_cores"] = 2 * per_cpu["actors_2"] / per_cpu["actors_1"]
    scaling["how"] = (f"Ray actors (distributed/selfplay.py RaySource), {plies} learner moves per actor per "
                      f"collection, pool opponent as in training, collections interleaved, best of {repeats}")
    return scaling


def print_scaling(scaling: dict, config) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Ray self-play actors, {config.blocks}x{config.channels} network, "
                        f"K = {config.games_per_batch}")
    for column in ("actors", "plies/s (best)", "plies/s (median)", "per actor", "cores used", "speedup"):
        table.add_column(column)
    one = scaling["actors_1"]["best_plies_per_second"]
    for name in [key for key in scaling if key.startswith("actors_")]:
        row = scaling[name]
        label = f"{row['actors']}" + (" + inference server" if name.endswith("server") else "")
        table.add_row(label, f"{row['best_plies_per_second']:,.0f}", f"{row['median_plies_per_second']:,.0f}",
                      f"{row['per_actor_plies_per_second']:,.0f}", f"{row['cpu_cores_used_best_run']:.2f}",
                      f"{row['best_plies_per_second'] / one:.2f}x"
                      + (" (goal >= 1.70)" if name == "actors_2" else ""))
    Console(width=120).print(table)
    per_cpu = scaling["plies_per_cpu_second_median"]
    rates = ", ".join(f"{name} {value:,.0f}" for name, value in per_cpu.items())
    print(f"plies per actor CPU-second (median): {rates}; "
          f"1 -> 2 actors on two free cores: {scaling['speedup_1_to_2_on_free_cores']:.2f}x")


if __name__ == "__main__":
    main()
