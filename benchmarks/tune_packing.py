"""Fractional-GPU packing of Tune trials: the same search with a whole GPU per trial and with a
fraction, side by side, on a GPU machine.

    python benchmarks/tune_packing.py [--algorithm mopie] [--trials 16] [--fractions 1,0.25]

Each setting runs `tune.py` as a researcher would (a fresh local Ray per run, inline trials), with
`--gpus-per-worker FRACTION`: Tune then places 1 / FRACTION trials on each GPU at once (a mopie
trial at the default size uses a few percent of an H200). The figure is trials per minute of
wall time, start-up included, and whether every trial finished. Writes
benchmarks/results/tune_packing.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_search(algorithm: str, trials: int, fraction: float, iterations: int) -> dict:
    storage = tempfile.mkdtemp(prefix="trainyard-packing-")
    command = [sys.executable, str(ROOT / "tune.py"), "--algorithm", algorithm, "--num-samples", str(trials),
               "--gpus-per-worker", f"{fraction:g}", "--storage", storage, "--scheduler", "fifo",
               "--set", f"max_iterations={iterations}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    output = done.stdout + done.stderr
    at_once = re.search(r"(\d+) at a time", output)
    # tune.py's closing line, "best trial by ... (N s, N terminated, N error)"; Ray's progress
    # tables before it also say "N TERMINATED", of the trials done so far
    finished = re.search(r"s, (\d+) terminated, (\d+) error\)", output)
    return {"gpus_per_trial": fraction, "trials": trials, "exit_code": done.returncode,
            "concurrent_trials": int(at_once.group(1)) if at_once else None,
            "terminated": int(finished.group(1)) if finished else None,
            "errors": int(finished.group(2)) if finished else None,
            "wall_seconds": round(wall, 1), "trials_per_minute": round(trials / wall * 60, 2),
            **({"tail": output.strip().splitlines()[-3:]} if done.returncode else {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="mopie")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--fractions", default="1,0.25")
    parser.add_argument("--out", default=str(RESULTS / "tune_packing.json"))
    args = parser.parse_args()
    import torch

    device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    rows = [run_search(args.algorithm, args.trials, float(f), args.iterations) for f in args.fractions.split(",")]
    for row in rows:
        print(json.dumps(row), flush=True)
    base = rows[0]["trials_per_minute"]
    for row in rows:
        row["speedup_vs_first"] = round(row["trials_per_minute"] / base, 2) if base else None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": device, "algorithm": args.algorithm,
                                          "iterations": args.iterations, "rows": rows}, indent=2))
    print(f"{'GPU/trial':>10} {'at once':>8} {'done':>5} {'wall s':>8} {'trials/min':>11} {'speed-up':>9}")
    for row in rows:
        print(f"{row['gpus_per_trial']:>10g} {row['concurrent_trials']!s:>8} {row['terminated']!s:>5} "
              f"{row['wall_seconds']:>8} {row['trials_per_minute']:>11} {row['speedup_vs_first']!s:>9}")
    return 0 if all(row["exit_code"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
