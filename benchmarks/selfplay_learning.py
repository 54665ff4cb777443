"""Does `ppo-shogi` learn within its budget? One training run capped by wall time, then the
delivered checkpoint (the state selected by ladder score) and the last iteration's weights
against the whole opponent ladder: 100 games each (colours alternated, draws not won), played
by the policy alone and, with `--search value1` (or `value2`), through the one-ply (two-ply)
value search as well.

    python benchmarks/selfplay_learning.py [--minutes 30] [--threads 2] [--actors N] [--device cpu|cuda]
        [--eval-actors M] [--final-games 100] [--final-workers W] [--search value1|value2]
        [--set KEY=VALUE ...] [--name NAME] [--out FILE]

`--actors 0` (default) collects in the learner's process (the default `collector`); `--actors N`
starts a local Ray with this machine's CPUs and N self-play actors (collector 'ray': collection
overlaps the update, evaluation runs on `--eval-actors` actors beside training). `--device cuda`
puts the learner on the GPU. The final matches run in `--final-workers` processes (default: all
cores), outside the training budget; their wall time is reported.

The bars: on 2 CPU cores within 30 minutes, more wins than losses against the one-ply material
player; on a 16-core GPU machine within 10 minutes with 12+ actors, >= 60% wins against one-ply
and more wins than losses against the two-ply minimax. Writes benchmarks/results/
selfplay_learning.json (or --out; one JSON object per --name) and the Elo-over-training figure
benchmarks/results/selfplay_learning_<name>_elo.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def timed_trainer_class(seconds: float):
    from trainers.selfplay.trainer import PpoShogiTrainer

    class TimedTrainer(PpoShogiTrainer):
        """The iteration that crosses the wall-time budget becomes the last one (its evaluation is
        submitted and waited for, as the last iteration's always is)."""

        def evaluate(self):
            if time.perf_counter() - self._fit_started >= seconds:
                self.config = self.config.model_copy(update={"max_iterations": self.iteration + 1})
            return super().evaluate()

    return TimedTrainer


def _play_chunk(args):
    """One worker process: a slice of a match (an even number of games keeps colours alternated)."""
    import torch

    torch.set_num_threads(1)
    from trainers.selfplay.evaluation import Match, play

    config, weights, opponent, games, seed = args
    result = play(Match(0, opponent, games, seed, weights), config)
    return result.wins, result.draws, result.losses, result.plies, result.scores


def final_matches(config, weights, games: int, workers: int, seed: int) -> dict:
    """Every ladder rung, `games` games, split over `workers` processes in chunks of 10."""
    import numpy as np

    jobs, index = [], []
    for number, opponent in enumerate(config.ladder):
        for chunk, start in enumerate(range(0, games, 10)):
            chunk_seed = int(np.random.SeedSequence([seed, number, chunk]).generate_state(1)[0])
            jobs.append((config, weights, opponent, min(10, games - start), chunk_seed))
            index.append(opponent)
    table = {name: {"games": 0, "wins": 0, "draws": 0, "losses": 0, "plies": 0} for name in config.ladder}
    with ProcessPoolExecutor(workers) as pool:
        for opponent, (wins, draws, losses, plies, _) in zip(index, pool.map(_play_chunk, jobs)):
            row = table[opponent]
            row["games"] += wins + draws + losses
            row["wins"] += wins
            row["draws"] += draws
            row["losses"] += losses
            row["plies"] += plies
    for row in table.values():
        row["win_rate"] = row["wins"] / row["games"]
        row["loss_rate"] = row["losses"] / row["games"]
    return table


def elo_figure(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainers.selfplay.agents import draw_elo_history

    figure, axis = plt.subplots(figsize=(7, 4))
    draw_elo_history(axis, history)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(args) -> dict:
    import torch

    from trainers.config import build_config, overrides_from_sets
    from trainers.context import LocalContext
    from trainers.selfplay.config import PpoShogiConfig

    torch.set_num_threads(args.threads)
    sets = list(args.set) + ["final_eval_games=0"]   # the final matches are played below, in parallel
    if not any(item.startswith("max_iterations=") for item in args.set):
        # the minutes are the budget: the config's default count (150) would end a fast machine's
        # run long before them (a 7-minute run on a 16-core H200 machine stopped at 150 iterations after 136 s)
        sets.append("max_iterations=1000000")
    if args.actors:
        sets += ["collector=ray", f"actors={args.actors}", f"eval_actors={args.eval_actors}"]
    config = build_config(PpoShogiConfig, overrides_from_sets(sets))
    if args.actors:
        import ray

        import distributed.selfplay  # noqa: F401  registers collector "ray"
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    folder = Path(tempfile.mkdtemp(prefix="trainyard-selfplay-learning-"))
    trainer = timed_trainer_class(args.minutes * 60)(config, LocalContext("ppo-shogi", folder, device=args.device,
                                                                          resume=False))
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    if args.actors:
        import ray

        ray.shutdown()
    selected = {key: value.detach().cpu() for key, value in trainer.network.state_dict().items()}
    last = trainer.last_weights
    held = int(result.final_metrics["final_weights_iteration"])
    history = result.history
    wall = history[-1]["elapsed_seconds"]
    row = {"sets": args.set, "threads": args.threads, "actors": args.actors, "eval_actors": args.eval_actors,
           "device": args.device, "machine": f"{platform.node()}: {os.cpu_count()} CPUs"
           + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
           "minutes_budget": args.minutes, "train_seconds": round(seconds, 1), "iterations": len(history),
           "selected_iteration": held, "last_iteration": last["iteration"],
           "total_plies": history[-1]["total_plies"], "plies_per_second": history[-1]["total_plies"] / wall,
           "learner_idle_fraction": sum(r["collect_seconds"] for r in history) / wall if args.actors else None,
           "final": {}}
    final_started = time.perf_counter()
    searches = ["none"] + ([args.search] if args.search != "none" else [])
    for search in searches:
        played = config.model_copy(update={"play_search": search})
        # the last iteration's weights play without search only (a move encodes and evaluates ~search_width
        # positions with value1, ~search_width x (search_width + the captures) with value2)
        for label, weights in (("selected", selected), ("last", last["weights"]))[:1 if search != "none" else 2]:
            row["final"][f"{label}_{search}"] = final_matches(played, weights, args.final_games, args.final_workers,
                                                              seed=1)
    row["final_seconds"] = round(time.perf_counter() - final_started, 1)
    row["elo_history"] = trainer.elo.history
    row["elo_ratings"] = trainer.elo.ratings
    row["curve"] = [{key: r.get(key) for key in ("iteration", "eval_iteration", "elapsed_seconds", "ladder_score",
                                                 "win_rate_random", "win_rate_capture", "win_rate_one_ply",
                                                 "loss_rate_one_ply", "win_rate_two_ply", "elo",
                                                 "source_policy_lag", "collect_seconds", "iteration_seconds")}
                    for r in history]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the learner")
    parser.add_argument("--actors", type=int, default=0, help="self-play Ray actors (0: in-process collection)")
    parser.add_argument("--eval-actors", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--final-games", type=int, default=100)
    parser.add_argument("--final-workers", type=int, default=os.cpu_count())
    parser.add_argument("--search", choices=("none", "value1", "value2"), default="none",
                        help="also play the final matches through this play-time search")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", default="default")
    parser.add_argument("--out", default=str(RESULTS / "selfplay_learning.json"))
    args = parser.parse_args()
    row = run(args)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report[args.name] = row
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    elo_figure(row["elo_history"], out.parent / f"selfplay_learning_{args.name}_elo.png",
               f"{args.name}: {row['machine']}, {row['iterations']} iterations in {row['train_seconds']:.0f} s")
    print(f"{args.name}: {row['iterations']} iterations in {row['train_seconds']} s, selected iteration "
          f"{row['selected_iteration']}, {row['plies_per_second']:.0f} plies/s; final matches "
          f"{row['final_seconds']} s")
    print(f"{'weights / search':<22}" + "".join(f"{name:>16}" for name in next(iter(row["final"].values()))))
    for label, table in row["final"].items():
        print(f"{label:<22}" + "".join(f"{r['wins']}/{r['draws']}/{r['losses']}".rjust(16) for r in table.values())
              + "   (wins/draws/losses)")
    for label, table in row["final"].items():
        one, two = table.get("one_ply"), table.get("two_ply")
        if one:
            print(f"{label}: more wins than losses vs one-ply: {'met' if one['wins'] > one['losses'] else 'NOT met'}; "
                  f">= 60% vs one-ply: {'met' if one['win_rate'] >= 0.6 else 'NOT met'}"
                  + (f"; more wins than losses vs two-ply: {'met' if two['wins'] > two['losses'] else 'NOT met'}"
                     if two else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
