"""What Ray costs: the same gat-advanced iterations in-process vs inside a 1-worker TorchTrainer,
and Tune's overhead per trial, in-trial (inline) vs a TorchTrainer per trial.

    python benchmarks/framework_overhead.py [--iterations 12] [--trials 4]

Prints a table and writes benchmarks/results/framework_overhead.json. Both sides run in this
one process, one after the other, on the same data (the machine is shared and noisy: compare
the ratio, not the seconds).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def steady_iteration_seconds(history: list[dict], skip: int = 2) -> float:
    """Median wall time between consecutive iterations (reports included), warm-up skipped."""
    elapsed = [row["elapsed_seconds"] for row in history]
    gaps = [b - a for a, b in zip(elapsed, elapsed[1:])][skip:]
    return statistics.median(gaps)


def in_process(config, storage: Path) -> dict:
    import torch

    from trainers.context import LocalContext
    from trainers.recommender.trainers import GatAdvancedTrainer

    # the TorchTrainer worker holds 1 CPU and Ray gives it one thread: compare like with like
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    trainer = GatAdvancedTrainer(config, LocalContext("gat-advanced", storage / "local", resume=False))
    setup = time.perf_counter() - started
    result = trainer.fit()
    torch.set_num_threads(threads)
    return {"start_seconds": setup, "iteration_seconds": steady_iteration_seconds(result.history),
            "total_seconds": time.perf_counter() - started}


def in_torch_trainer(config, storage: Path) -> dict:
    from distributed.resources import WorkerPlan
    from distributed.train import build_torch_trainer
    from trainers.checkpoint import load_checkpoint

    trainer = build_torch_trainer("gat-advanced", config, WorkerPlan(1, 1.0, 0.0), storage, "train")
    started = time.perf_counter()
    result = trainer.fit()
    total = time.perf_counter() - started
    history = load_checkpoint(result.checkpoint.path)["trainer"]["history"]
    # start-up: everything before the first iteration began (placement group, worker, setup)
    first_start = history[0]["elapsed_seconds"] - history[0]["iteration_seconds"]
    inside = history[-1]["elapsed_seconds"]
    return {"start_seconds": total - inside + first_start, "iteration_seconds": steady_iteration_seconds(history),
            "total_seconds": total}


def tune_overhead(mode: str, trials: int, base_sets: list[str], storage: Path) -> dict:
    import pandas as pd

    import tune

    name = f"overhead-{mode}"
    started = time.perf_counter()
    code = tune.main(["--algorithm", "gat-simple", "--num-samples", str(trials), "--scheduler", "fifo",
                      "--trial-mode", mode, "--max-concurrent", "1", "--storage", str(storage), "--name", name,
                      *[f"--set={s}" for s in base_sets]])
    wall = time.perf_counter() - started
    assert code == 0, f"tune.py exited {code}"
    table = pd.read_csv(storage / name / "trials.csv")
    # the trainers' own time: building data and model, and the iterations
    compute = float(table["elapsed_seconds"].sum() + table["setup_seconds"].sum())
    return {"wall_seconds": wall, "trials": trials, "compute_seconds": compute,
            "overhead_per_trial_seconds": (wall - compute) / trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()

    import ray
    from rich.console import Console
    from rich.table import Table

    from trainers.recommender.config import GatAdvancedConfig

    storage = Path(tempfile.mkdtemp(prefix="trainyard-overhead-"))
    data_dir = str(storage / "data")
    config = GatAdvancedConfig(max_iterations=args.iterations, patience=0, data_dir=data_dir)
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1")
    local = in_process(config, storage)
    train = in_torch_trainer(config, storage)
    small = ["n_users=300", "n_songs=1500", "n_artists=150", f"data_dir={data_dir}", "max_iterations=3"]
    inline = tune_overhead("inline", args.trials, small, storage)
    per_trial_train = tune_overhead("train", args.trials, small, storage)
    ray.shutdown()

    ratio = train["iteration_seconds"] / local["iteration_seconds"]
    results = {
        "device": "2-core CPU machine (no GPU)",
        "iterations": args.iterations,
        "in_process": local,
        "torch_trainer_1_worker": train,
        "steady_state_ratio": ratio,
        "tune_inline": inline,
        "tune_torch_trainer_per_trial": per_trial_train,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "framework_overhead.json").write_text(json.dumps(results, indent=2))

    table = Table(title="gat-advanced: in-process vs Ray (2 CPU cores)")
    for column in ("path", "start-up (s)", "s / iteration (steady)", "total (s)"):
        table.add_column(column)
    table.add_row("in-process (LocalContext)", f"{local['start_seconds']:.2f}", f"{local['iteration_seconds']:.3f}",
                  f"{local['total_seconds']:.1f}")
    table.add_row("TorchTrainer, 1 worker", f"{train['start_seconds']:.2f}", f"{train['iteration_seconds']:.3f}",
                  f"{train['total_seconds']:.1f}")
    table.add_row("ratio (goal <= 1.10)", "", f"{ratio:.3f}", "")
    tune_table = Table(title=f"Tune overhead per trial ({args.trials} trials of gat-simple, 3 iterations, one at a time)")
    for column in ("trial kind", "wall (s)", "trainer time (s)", "overhead / trial (s)"):
        tune_table.add_column(column)
    for label, row in (("inline (ray.tune.report)", inline), ("TorchTrainer per trial", per_trial_train)):
        tune_table.add_row(label, f"{row['wall_seconds']:.1f}", f"{row['compute_seconds']:.1f}",
                           f"{row['overhead_per_trial_seconds']:.2f}")
    console = Console(width=120)
    console.print(table)
    console.print(tune_table)


if __name__ == "__main__":
    main()
