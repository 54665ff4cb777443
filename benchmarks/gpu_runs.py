"""Every algorithm through `run.py` on GPUs: `--gpus-per-worker 1` with 1 worker (one GPU) and 2
workers (two GPUs of one machine, NCCL). Per run: exit code, wall time, the final metric.

    python benchmarks/gpu_runs.py [--workers 1 2] [--gpus-per-worker 1] [--only mopie prism] [--out F]

Short runs (a few iterations each, `SHORT`): this proves the path (TorchTrainer, NCCL, the
trainers' GPU code, checkpoints, summary.json), it is not a quality benchmark. The runs share
one Ray instance in this process (as the end-to-end tests do), so Ray starts once.
`--gpus-per-worker 0` runs the same on CPU workers (a check of this script without a GPU).
Writes benchmarks/results/gpu-runs.json (or --out).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# a few iterations of each algorithm's default problem
SHORT: dict[str, list[str]] = {
    "mopie": ["max_iterations=3"],
    "prism": ["max_iterations=4"],
    "born-classify": ["max_iterations=3"],
    "born-generative": ["max_iterations=3"],
    "born-gan": ["max_iterations=2", "pretrain_epochs=5"],
    "born-adversarial": ["max_iterations=2"],
    "ppo-shogi": ["max_iterations=2", "rollout_plies=1024", "eval_every=1000", "eval_games=2",
                  "final_eval_games=0"],
    "gat-simple": ["max_iterations=2"],
    "gat-advanced": ["max_iterations=2"],
}


def run_one(algorithm: str, workers: int, gpus: float, storage: Path) -> dict:
    import run

    name = f"{algorithm}-w{workers}"
    argv = ["--algorithm", algorithm, "--workers", str(workers), "--gpus-per-worker", f"{gpus:g}",
            "--storage", str(storage), "--name", name, *[f"--set={s}" for s in SHORT[algorithm]]]
    output = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = run.main(argv)
    row = {"algorithm": algorithm, "workers": workers, "gpus_per_worker": gpus, "exit_code": code,
           "wall_seconds": round(time.perf_counter() - started, 1)}
    summary_path = storage / name / "summary.json"
    if code == 0 and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        metrics = summary["metrics"]
        row["train_seconds"] = round(summary["wall_seconds"], 1)
        row["metric"] = summary["metric"]
        row["metric_value"] = metrics.get(summary["metric"])
        # the held-out figures each trainer reports at the end
        row["final"] = {k: round(v, 4) for k, v in metrics.items() if k.startswith(("final_", "test_"))}
    else:
        row["output_tail"] = output.getvalue()[-2000:]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gpus-per-worker", type=float, default=1.0)
    parser.add_argument("--only", nargs="*", choices=sorted(SHORT), help="algorithms (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu-runs.json"))
    args = parser.parse_args(argv)

    import ray
    import torch

    gpus = torch.cuda.device_count()
    if args.gpus_per_worker and max(args.workers) * args.gpus_per_worker > gpus:
        print(f"--workers {max(args.workers)} x --gpus-per-worker {args.gpus_per_worker:g} needs more "
              f"than the {gpus} GPU(s) here", file=sys.stderr)
        return 2
    ray.init(num_gpus=gpus, include_dashboard=False)
    storage = Path(tempfile.mkdtemp(prefix="trainyard-gpu-runs-"))
    device = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else "CPU"
    report = {"device": device, "runs": []}
    out = Path(args.out)
    for workers in args.workers:
        for algorithm in args.only or list(SHORT):
            try:
                row = run_one(algorithm, workers, args.gpus_per_worker, storage)
            except Exception as error:  # noqa: BLE001 - one failing run is recorded, the others go on
                row = {"algorithm": algorithm, "workers": workers, "error": f"{type(error).__name__}: {error}"}
            print(json.dumps(row), flush=True)
            report["runs"].append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2))
    ray.shutdown()
    failed = [r for r in report["runs"] if r.get("exit_code") != 0]
    print(f"{len(report['runs']) - len(failed)} of {len(report['runs'])} runs exited 0; wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
