"""Self-play throughput of one actor: the in-process lockstep game runner (engine, features,
masks, sampling, storing, the default network) against the network's own batched inference rate
on the same core. Goal: everything but the network costs under 20%, i.e. ratio >= 0.80.

    python benchmarks/selfplay.py [--plies 4096] [--repeats 3]

Single-threaded torch (one actor = one core). Prints a table and writes
benchmarks/results/selfplay.json. The machine is shared and noisy: each figure is the best of
`--repeats` (the least disturbed run), the median is kept beside it.

`measure_source` times any experience source (the object the trainer asks for batches); the Ray
actor source (distributed/selfplay.py) can be measured with 1 and 2 actors through it to give the
scaling figure, per actor = total / actors.
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
        "scaling": "1 -> 2 actors: measure the Ray actor source with measure_source() (not measured here)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "selfplay.json"
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


if __name__ == "__main__":
    main()
