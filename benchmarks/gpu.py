"""Every algorithm on CPU and on GPUs: iteration time in-process, through TorchTrainer on 1 and 2
GPUs, and `mopie`'s epoch against its FFT floor.

    python benchmarks/gpu.py [--device cuda|cpu] [--skip-ray] [--only NAME ...] [--out FILE]

In-process rows run the trainer with a LocalContext on `--device` (no Ray start-up in the
figure); Ray rows build the same TorchTrainer as `run.py` (1 worker x 1 GPU, then 2 workers x 1
GPU, NCCL) and read the per-iteration wall times from the run's last checkpoint. The first
iterations are warm-up (CUDA context, cuFFT plans, allocator): the figure is the median gap
between iterations after them.

Writes benchmarks/results/gpu-<device>.json (or --out). CI has no GPU: this is run by hand, on a
GPU machine, and its table is copied into the README with the machine it came from.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"

# algorithm, config overrides sized to keep a GPU busy (and a CPU run short enough to measure)
CASES: dict[str, tuple[str, dict]] = {
    "mopie-256": ("mopie", dict(max_iterations=8, patience=0)),
    "mopie-1024": ("mopie", dict(image_size=1024, obj_size=512, n_samples=240, sample_diameter=101,
                                 batch_size=60, max_iterations=8, patience=0)),
    "prism-512": ("prism", dict(image_size=512, obj_size=256, n_samples=8, sample_diameter=101,
                                max_iterations=6, patience=0, retry=False)),
    "born-classify-digits": ("born-classify", dict(dataset="digits", feature_dim=2, bond_dim=12,
                                                   batch_size=512, max_iterations=8, patience=0)),
    "gat-advanced": ("gat-advanced", dict(max_iterations=6, patience=0)),
    "ppo-shogi": ("ppo-shogi", dict(max_iterations=4, rollout_plies=2048, eval_every=1000,
                                    eval_games=2, final_eval_games=0)),
}
# which cases also run through TorchTrainer on 1 and 2 GPUs (data-parallel over their batch axis)
RAY_CASES = ("born-classify-digits", "ppo-shogi", "gat-advanced", "mopie-1024", "prism-512")


def steady_seconds(elapsed: list[float], skip: int = 2) -> float:
    """Median gap between consecutive iterations after `skip` warm-up gaps."""
    gaps = [b - a for a, b in zip(elapsed, elapsed[1:])]
    gaps = gaps[skip:] if len(gaps) > skip else gaps
    return statistics.median(gaps) if gaps else float("nan")


def build_config(algorithm: str, overrides: dict, data_dir: str):
    from trainers.registry import ALGORITHMS

    spec = ALGORITHMS[algorithm]
    values = dict(overrides)
    if "data_dir" in spec.config_class.model_fields:
        values["data_dir"] = data_dir
    return spec, spec.config_class(**values)


def in_process(case: str, device: str, data_dir: str) -> dict:
    import torch

    from trainers.context import LocalContext

    algorithm, overrides = CASES[case]
    spec, config = build_config(algorithm, overrides, data_dir)
    started = time.perf_counter()
    trainer = spec.trainer_class()(config, LocalContext(algorithm, None, device=device, resume=False))
    setup = time.perf_counter() - started
    result = trainer.fit()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    history = result.history
    return {"case": case, "where": f"in-process {device}", "setup_seconds": round(setup, 3),
            "iteration_seconds": steady_seconds([row["elapsed_seconds"] for row in history]),
            **per_step(history), "iterations": len(history), "metric": config.metric,
            "metric_value": float(history[-1].get(config.metric, float("nan")))}


def per_step(history: list[dict]) -> dict:
    """prism: seconds per optimiser step (an iteration is one progressive sample of many steps)."""
    rows = [row for row in history[1:] if row.get("steps")]
    if not rows:
        return {}
    return {"step_seconds": statistics.median(row["iteration_seconds"] / row["steps"] for row in rows)}


def through_ray(case: str, workers: int, gpus_per_worker: float, data_dir: str, storage: Path) -> dict:
    from distributed.resources import WorkerPlan
    from distributed.train import build_torch_trainer
    from trainers.checkpoint import load_checkpoint

    algorithm, overrides = CASES[case]
    _, config = build_config(algorithm, overrides, data_dir)
    name = f"{case}-w{workers}-g{gpus_per_worker:g}"
    trainer = build_torch_trainer(algorithm, config, WorkerPlan(workers, 1.0, gpus_per_worker), storage, name)
    started = time.perf_counter()
    result = trainer.fit()
    total = time.perf_counter() - started
    history = load_checkpoint(result.checkpoint.path)["trainer"]["history"]
    # inside the worker (what the algorithm costs) and between reports (what the run sees: Ray
    # Train takes one report per controller poll, every 0.25 s, so short iterations stretch)
    inside = [row["iteration_seconds"] for row in history]
    return {"case": case, "where": f"TorchTrainer {workers} x {gpus_per_worker:g} GPU",
            "total_seconds": round(total, 2),
            "iteration_seconds": statistics.median(inside[2:] if len(inside) > 3 else inside),
            "report_gap_seconds": steady_seconds([row["elapsed_seconds"] for row in history]),
            "iterations": len(history), "metric": config.metric,
            "metric_value": float(result.metrics.get(config.metric, float("nan")))}


def fft_floor(device: str) -> list[dict]:
    """Seconds of the two FFTs per aperture position of one mopie epoch: every position in one
    batched FFT (the hardware's best), at the frame size mopie uses and at the full grid."""
    import torch

    from trainers.imaging.mopie import auto_frame_size

    rows = []
    for case in ("mopie-256", "mopie-1024"):
        overrides = CASES[case][1]
        grid, diameter = overrides.get("image_size", 256), overrides.get("sample_diameter", 41.0)
        positions = batch = overrides.get("n_samples", 193)
        for side in sorted({auto_frame_size(grid, diameter), grid}):
            data = torch.randn(batch, side, side, dtype=torch.complex64, device=device)
            seconds = _time_fft(data, device)
            per_image = seconds / batch
            rows.append({"case": case, "fft_side": side, "fft_seconds_per_image": per_image,
                         "floor_epoch_seconds": 2 * positions * per_image,
                         "bandwidth_GBps": 2 * data.numel() * 8 / seconds / 1e9})
    return rows


def _time_fft(data, device: str, repeats: int = 20) -> float:
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        torch.fft.fft2(data)
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        torch.fft.fft2(data)
    sync()
    return (time.perf_counter() - started) / repeats


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    table = Table(title=title)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    for key in keys:
        table.add_column(key)
    for row in rows:
        table.add_row(*(f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys))
    Console(width=200).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/gpu-<device>.json)")
    args = parser.parse_args()
    import torch

    if args.device == "cpu":
        torch.set_num_threads(1)  # what one TorchTrainer worker on 1 CPU gets
    cases = args.only or list(CASES)
    data_dir = tempfile.mkdtemp(prefix="trainyard-gpu-data-")
    report = {"device": _describe(args.device), "in_process": [], "ray": [], "fft_floor": []}
    out = Path(args.out) if args.out else RESULTS / f"gpu-{args.device.split(':')[0]}.json"

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))

    for case in cases:
        report["in_process"].append(_guarded(lambda: in_process(case, args.device, data_dir), case))
        save()
    print_table(report["in_process"], f"in-process on {report['device']}")
    if "mopie-256" in cases or "mopie-1024" in cases:
        report["fft_floor"] = fft_floor(args.device)
        print_table(report["fft_floor"], "mopie FFT floor")
        save()
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    if not args.skip_ray and gpus >= 1:
        import ray

        ray.init(num_gpus=gpus, include_dashboard=False)
        storage = Path(tempfile.mkdtemp(prefix="trainyard-gpu-runs-"))
        for case in (c for c in RAY_CASES if c in cases):
            for workers in (1, 2)[: gpus]:
                report["ray"].append(_guarded(lambda: through_ray(case, workers, 1.0, data_dir, storage), case))
                save()
        ray.shutdown()
        print_table(report["ray"], "through TorchTrainer")
    save()
    print(f"wrote {out}")
    return 0


def _guarded(measure, case: str) -> dict:
    """One failing case is recorded with its error; the others still run."""
    try:
        row = measure()
    except Exception as error:  # noqa: BLE001 - a benchmark reports, it does not stop
        import traceback

        traceback.print_exc()
        row = {"case": case, "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    print(json.dumps(row), flush=True)
    return row


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _describe(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores, 1 thread)"


if __name__ == "__main__":
    sys.exit(main())
