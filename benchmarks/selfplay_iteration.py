"""Is the in-process `ppo-shogi` default slower per iteration than before the opponent ladder?

    python benchmarks/selfplay_iteration.py [--base 00dab9a] [--iterations 10] [--repeats 2] [--threads 2]

Runs the default config (in-process collector, `final_eval_games=0`) for `--iterations`
iterations with this checkout and with the `--base` commit (extracted with `git archive`), one
after the other, alternating, `--repeats` times, each in its own process: on a shared machine
the alternation makes a change in load hit both alike. With the default `eval_every` 10, ten
iterations hold two evaluations (the first and the last), as a tenth of a 150-iteration run
does. Reports the median seconds per iteration (evaluations included) and the ratio.
Writes benchmarks/results/selfplay_iteration.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

CHILD = """
import json, sys, torch
torch.set_num_threads({threads})
from trainers.context import LocalContext
from trainers.selfplay.config import PpoShogiConfig
from trainers.selfplay.trainer import PpoShogiTrainer
config = PpoShogiConfig(max_iterations={iterations}, final_eval_games=0)
history = PpoShogiTrainer(config, LocalContext("ppo-shogi")).fit().history
print(json.dumps([{{k: row.get(k) for k in ("iteration_seconds", "eval_seconds", "update_seconds")}} for row in history]))
"""


def one_run(tree: Path, iterations: int, threads: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", CHILD.format(iterations=iterations, threads=threads)], cwd=tree,
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="00dab9a")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "selfplay_iteration.json"))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="trainyard-base-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    runs: dict[str, list[list[dict]]] = {"base": [], "this": []}
    for repeat in range(args.repeats):
        for name, tree in (("base", base), ("this", ROOT)) if repeat % 2 == 0 else (("this", ROOT), ("base", base)):
            runs[name].append(one_run(tree, args.iterations, args.threads))
            print(f"repeat {repeat} {name}: {sum(r['iteration_seconds'] for r in runs[name][-1]):.1f} s", flush=True)
    summary = {}
    for name, rows in runs.items():
        per_run = [statistics.mean(r["iteration_seconds"] for r in run) for run in rows]
        summary[name] = {"seconds_per_iteration": per_run, "median": statistics.median(per_run),
                         "eval_seconds": [[r["eval_seconds"] for r in run] for run in rows]}
    ratio = summary["this"]["median"] / summary["base"]["median"]
    report = {"machine": f"{platform.node()}: {os.cpu_count()} CPUs (shared)", "base": args.base,
              "iterations": args.iterations, "repeats": args.repeats, "threads": args.threads, **summary,
              "ratio_this_over_base": ratio}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"seconds per iteration (mean of {args.iterations}, median of {args.repeats}): base "
          f"{summary['base']['median']:.2f}, this {summary['this']['median']:.2f}; ratio {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
