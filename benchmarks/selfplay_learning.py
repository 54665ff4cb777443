"""Does `ppo-shogi` learn within its budget? One training run in-process, capped by wall time,
then the final evaluation: 100 games (colours alternated, draws not won) against the uniform
random player and against the capture-first heuristic, plus the Elo table over training.

    python benchmarks/selfplay_learning.py [--minutes 30] [--threads 2] [--set KEY=VALUE ...]
        [--name NAME] [--out FILE]

The bars (issue 5): >= 90% wins against random, and more wins than losses against
capture-first, within 30 minutes on 2 CPU cores. Writes benchmarks/results/selfplay_learning.json
(or --out); one JSON object per --name, so several variants can share a file.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def timed_trainer_class(seconds: float):
    from trainers.selfplay.trainer import PpoShogiTrainer

    class TimedTrainer(PpoShogiTrainer):
        """Stops after the iteration that crosses the wall-time budget (the final evaluation on
        the best state still runs, outside the budget)."""

        def on_iteration_end(self, iteration: int, metrics: dict[str, float]) -> bool:
            return metrics["elapsed_seconds"] >= seconds

    return TimedTrainer


def run(minutes: float, sets: list[str], threads: int) -> dict:
    import torch

    from trainers.config import build_config, overrides_from_sets
    from trainers.context import LocalContext
    from trainers.selfplay.config import PpoShogiConfig

    torch.set_num_threads(threads)
    config = build_config(PpoShogiConfig, overrides_from_sets(sets))
    folder = Path(tempfile.mkdtemp(prefix="trainyard-selfplay-learning-"))
    trainer = timed_trainer_class(minutes * 60)(config, LocalContext("ppo-shogi", folder, resume=False))
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    final = dict(result.final_metrics)
    curve = [{key: row.get(key) for key in ("iteration", "elapsed_seconds", "win_rate_random", "win_rate_capture",
                                            "loss_rate_capture", "elo")} for row in result.history]
    return {"sets": sets, "threads": threads, "minutes_budget": minutes, "seconds": round(seconds, 1),
            "iterations": len(result.history), "best_iteration": result.best_iteration,
            **final, "elo_history": trainer.elo.history, "elo_ratings": trainer.elo.ratings, "curve": curve}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", default="default")
    parser.add_argument("--out", default=str(RESULTS / "selfplay_learning.json"))
    args = parser.parse_args()
    row = run(args.minutes, args.set, args.threads)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report[args.name] = row
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    keys = [k for k in row if k.startswith("final_")]
    print(f"{args.name}: {row['iterations']} iterations in {row['seconds']} s; "
          + ", ".join(f"{k} {row[k]:.3g}" for k in keys))
    bar_random = row.get("final_win_rate_random", 0) >= 0.9
    bar_capture = row.get("final_win_rate_capture", 0) > row.get("final_loss_rate_capture", 1)
    print(f"bars: >= 90% vs random: {'met' if bar_random else 'NOT met'}; "
          f"more wins than losses vs capture-first: {'met' if bar_capture else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
