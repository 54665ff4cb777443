"""Every algorithm on CPU and on GPUs: iteration time in-process, through TorchTrainer on 1 and 2
GPUs (data-parallel over each algorithm's batch axis), AMP and torch.compile variants, and
`mopie`'s epoch against its FFT floor.

    python benchmarks/gpu.py [--device cuda|cpu] [--skip-ray] [--only NAME ...] [--out FILE]

In-process rows run the trainer with a LocalContext on `--device` (no Ray start-up in the
figure). Ray rows run the same trainers inside one TorchTrainer per world size (1 worker x 1 GPU,
then 2 workers x 1 GPU, NCCL; one start-up each instead of one per case), with the Ray Train
context's rank, device, DDP wrapping and all-reduce; nothing is reported to Ray per iteration.

Two times per row: `iteration_seconds`, the median gap between iterations after the warm-up
(CUDA context, cuFFT plans, compilation), evaluation included; and `inner_seconds`, the part
that is split over the ranks, measured inside the trainer: mopie's epoch, the Born machine's
training epoch, the PPO learner's update, prism's optimiser step. Evaluation runs whole on every
rank (it is not data-parallel), so the 1 -> 2 scaling is quoted on `inner_seconds`.

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
BIG_DIGITS = "digits-65k.parquet"  # written into the data folder by `prepare_data`

MOPIE_1024 = dict(image_size=1024, obj_size=512, n_samples=240, sample_diameter=101, batch_size=60,
                  max_iterations=10, patience=0)
PRISM_512 = dict(image_size=512, obj_size=256, n_samples=8, sample_diameter=101, max_iterations=6, patience=0,
                 retry=False)
PPO = dict(max_iterations=4, rollout_plies=2048, eval_every=1000, eval_games=2, final_eval_games=0)
# the PPO learner alone (`learner_case`): one real rollout of 16,384 plies, tiled to 131,072 rows,
# 8 minibatches (16,384 rows per step on one GPU, 8,192 per rank on two), 3 epochs
PPO_LEARNER = dict(rollout_plies=16384, num_minibatches=8, update_epochs=3)
LEARNER_ROWS = int(os.environ.get("TRAINYARD_LEARNER_ROWS", 131072))  # smaller for a check on a CPU
BORN_DIGITS = dict(dataset="digits", feature_dim=2, bond_dim=12, batch_size=512, max_iterations=8, patience=0)
# digits-sized model (64 sites, d 2, D 20), 65,536 training images, 8,192 per worker and step
BORN_BIG = dict(dataset=BIG_DIGITS, feature_dim=2, bond_dim=20, batch_size=8192, val_frac=0.01, test_frac=0.01,
                max_iterations=6, patience=0)

# case: (algorithm, config overrides, the metric that times the data-parallel part)
CASES: dict[str, tuple[str, dict, str | None]] = {
    "mopie-256": ("mopie", dict(max_iterations=10, patience=0), "epoch_seconds"),
    "mopie-1024": ("mopie", MOPIE_1024, "epoch_seconds"),
    # full-grid frames: 1024^2 FFTs per aperture, the work the FFT floor counts
    "mopie-1024-fullgrid": ("mopie", dict(MOPIE_1024, frame_size=1024), "epoch_seconds"),
    "prism-512": ("prism", PRISM_512, "step_seconds"),
    "prism-512-eager": ("prism", dict(PRISM_512, cuda_graphs=False), "step_seconds"),  # no CUDA graph
    "prism-512-bf16": ("prism", dict(PRISM_512, mixed_precision=True), "step_seconds"),
    "prism-512-compile": ("prism", dict(PRISM_512, compile=True), "step_seconds"),
    "born-classify-digits": ("born-classify", BORN_DIGITS, "epoch_seconds"),
    "born-classify-big": ("born-classify", BORN_BIG, "epoch_seconds"),
    "gat-advanced": ("gat-advanced", dict(max_iterations=6, patience=0), None),
    "gat-advanced-bf16": ("gat-advanced", dict(max_iterations=6, patience=0, mixed_precision=True), None),
    "gat-advanced-compile": ("gat-advanced", dict(max_iterations=6, patience=0, compile=True), None),
    "ppo-shogi": ("ppo-shogi", PPO, "update_seconds"),
    "ppo-learner": ("ppo-learner", PPO_LEARNER, "update_seconds"),
    "ppo-learner-bf16": ("ppo-learner", dict(PPO_LEARNER, mixed_precision=True), "update_seconds"),
    "ppo-learner-compile": ("ppo-learner", dict(PPO_LEARNER, compile=True), "update_seconds"),
}
# the cases that also run through TorchTrainer on 1 and 2 GPUs
RAY_CASES = ("mopie-1024", "mopie-1024-fullgrid", "prism-512", "born-classify-big", "born-classify-digits",
             "ppo-learner", "gat-advanced")
# which cases the CPU run skips (minutes each on one core, and no CPU claim rests on them)
GPU_ONLY = ("mopie-1024-fullgrid", "prism-512-eager", "prism-512-compile", "gat-advanced-compile", "ppo-learner-compile",
            "ppo-learner-bf16", "gat-advanced-bf16", "prism-512-bf16", "born-classify-big", "ppo-learner")


def steady_seconds(elapsed: list[float], skip: int = 2) -> float:
    """Median gap between consecutive iterations after `skip` warm-up gaps."""
    gaps = [b - a for a, b in zip(elapsed, elapsed[1:])]
    gaps = gaps[skip:] if len(gaps) > skip else gaps
    return statistics.median(gaps) if gaps else float("nan")


def prepare_data(data_dir: str) -> None:
    """A digits-sized classification set big enough for big batches: sklearn's 1,797 digits, each
    repeated with seeded pixel noise (sd 0.5 of the 0-16 scale) to 66,874 rows, 65,536 of them
    in the 98% training split."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits

    path = Path(data_dir) / BIG_DIGITS
    if path.is_file():
        return
    digits = load_digits()
    rng = np.random.default_rng(0)
    rows = 66874
    pick = np.resize(np.arange(len(digits.target)), rows)
    features = np.clip(digits.data[pick] + rng.normal(0, 0.5, (rows, 64)), 0, 16).astype(np.float32)
    frame = pd.DataFrame(features, columns=[f"pixel{i}" for i in range(64)])
    frame["label"] = digits.target[pick]
    frame.to_parquet(path)


def learner_case(case: str, device, rank: int = 0, world_size: int = 1, prepare_model=None) -> dict:
    """The PPO learner's update (trainers/selfplay/ppo.py, the trainer's own function) on this
    rank's shard of a big experience batch: one real self-play rollout, tiled, so that the timing
    is not self-play's. `prepare_model`: DDP through Ray Train when there are several ranks."""
    import numpy as np
    import torch

    from trainers.selfplay.config import PpoShogiConfig
    from trainers.selfplay.network import ActorCritic
    from trainers.selfplay.ppo import ppo_update
    from trainers.selfplay.runner import ExperienceBatch
    from trainers.selfplay.sources import InProcessSource

    config = PpoShogiConfig(**CASES[case][1])
    torch.manual_seed(0)
    network = ActorCritic(config.blocks, config.channels)
    rollout = ExperienceBatch.concat(InProcessSource(config).collect(network.state_dict(), config.rollout_plies,
                                                                     seed=0))
    batch = rollout.select(np.resize(np.arange(len(rollout)), LEARNER_ROWS)).shard(rank, world_size)
    model = prepare_model(network) if prepare_model else network.to(device)
    trained = torch.compile(model) if config.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=1e-5)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(4):  # the first is warm-up (allocator, cuDNN plans, compilation)
        started = time.perf_counter()
        ppo_update(trained, optimizer, batch, config, generator, device)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times[1:])
    return {"iteration_seconds": seconds, "inner_seconds": seconds, "rows_per_rank": len(batch),
            "rows_per_second": LEARNER_ROWS * config.update_epochs / seconds, "iterations": len(times)}


def build_config(case: str, data_dir: str):
    from trainers.registry import ALGORITHMS

    algorithm, overrides, _ = CASES[case]
    spec = ALGORITHMS[algorithm]
    values = dict(overrides)
    if "data_dir" in spec.config_class.model_fields:
        values["data_dir"] = data_dir
    if values.get("dataset") == BIG_DIGITS:
        values["dataset"] = str(Path(data_dir) / BIG_DIGITS)
    return spec, spec.config_class(**values)


def timings(case: str, history: list[dict]) -> dict:
    """The row's times from a run's per-iteration metrics (see the module docstring)."""
    inner_key = CASES[case][2]
    row = {"iteration_seconds": steady_seconds([r["elapsed_seconds"] for r in history])}
    if inner_key == "step_seconds":  # prism: an iteration is one progressive sample of many steps
        rows = [r for r in history[1:] if r.get("steps")]
        if rows:
            row["inner_seconds"] = statistics.median(r["iteration_seconds"] / r["steps"] for r in rows)
            row["sample_seconds"] = statistics.median(r["iteration_seconds"] for r in rows)
    elif inner_key:
        values = [r[inner_key] for r in history if inner_key in r]
        if values:
            row["inner_seconds"] = statistics.median(values[2:] if len(values) > 3 else values)
    return row


def in_process(case: str, device: str, data_dir: str) -> dict:
    import torch

    from trainers.context import LocalContext

    if CASES[case][0] == "ppo-learner":
        return {"case": case, "where": f"in-process {device}", **learner_case(case, torch.device(device))}
    spec, config = build_config(case, data_dir)
    started = time.perf_counter()
    trainer = spec.trainer_class()(config, LocalContext(spec.name, None, device=device, resume=False))
    setup = time.perf_counter() - started
    result = trainer.fit()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"case": case, "where": f"in-process {device}", "setup_seconds": round(setup, 3),
            **timings(case, result.history), "iterations": len(result.history), "metric": config.metric,
            "metric_value": float(result.history[-1].get(config.metric, float("nan")))}


def bench_loop(loop_config: dict) -> None:
    """TorchTrainer's train_loop_per_worker: every case in turn, rank 0 writes the rows."""
    import ray.train
    import ray.train.torch
    import torch

    from distributed.context import RayTrainContext

    class BenchContext(RayTrainContext):
        """The Ray Train context's rank, device, DDP and all-reduce; reports stay in the worker."""

        def __init__(self, algorithm: str):  # noqa: super().__init__ would start a run logger
            train_context = ray.train.get_context()
            self.algorithm, self.output_dir, self.logger = algorithm, None, None
            self.rank, self.world_size = train_context.get_world_rank(), train_context.get_world_size()
            self.device = ray.train.torch.get_device()

        def report(self, metrics: dict, state) -> None:
            pass

        def latest_state(self):
            return None

    def measure(case: str) -> dict:
        train_context = ray.train.get_context()
        world, rank = train_context.get_world_size(), train_context.get_world_rank()
        where = f"TorchTrainer {world} x 1 {'GPU' if torch.cuda.is_available() else 'CPU'}"
        if CASES[case][0] == "ppo-learner":
            return {"case": case, "where": where, **learner_case(case, ray.train.torch.get_device(), rank, world,
                                                                  ray.train.torch.prepare_model)}
        spec, config = build_config(case, loop_config["data_dir"])
        started = time.perf_counter()
        result = spec.trainer_class()(config, BenchContext(spec.name)).fit()
        return {"case": case, "where": where, "total_seconds": round(time.perf_counter() - started, 2),
                **timings(case, result.history), "iterations": len(result.history), "metric": config.metric,
                "metric_value": float(result.history[-1].get(config.metric, float("nan")))}

    rows = []
    for case in loop_config["cases"]:
        try:
            rows.append(measure(case))
        except Exception as error:  # noqa: BLE001 - one failing case is recorded, the others run
            rows.append({"case": case, "error": f"{type(error).__name__}: {str(error)[:300]}"})
        if ray.train.get_context().get_world_rank() == 0:
            print(json.dumps(rows[-1]), flush=True)
            Path(loop_config["out"]).write_text(json.dumps(rows))


def through_ray(cases: list[str], workers: int, data_dir: str, storage: Path, use_gpu: bool = True) -> list[dict]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(data_dir) / f"ray-rows-{workers}.json"
    trainer = TorchTrainer(bench_loop, train_loop_config={"cases": cases, "data_dir": data_dir, "out": str(out)},
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
                           run_config=RunConfig(name=f"gpu-bench-{workers}", storage_path=str(storage)))
    started = time.perf_counter()
    trainer.fit()
    print(f"TorchTrainer {workers} worker(s): {time.perf_counter() - started:.1f} s with start-up", flush=True)
    return json.loads(out.read_text()) if out.is_file() else []


def scaling_rows(ray_rows: list[dict]) -> list[dict]:
    """1 -> 2 GPU speed-up of each case, on the data-parallel part (and on whole iterations)."""
    by_case: dict[str, dict[int, dict]] = {}
    for row in ray_rows:
        if "where" in row:
            by_case.setdefault(row["case"], {})[int(row["where"].split()[1])] = row
    rows = []
    for case, runs in by_case.items():
        if 1 in runs and 2 in runs:
            one, two = runs[1], runs[2]
            row = {"case": case, "iteration_scaling": one["iteration_seconds"] / two["iteration_seconds"]}
            if "inner_seconds" in one and "inner_seconds" in two:
                row |= {"inner_1gpu": one["inner_seconds"], "inner_2gpu": two["inner_seconds"],
                        "inner_scaling": one["inner_seconds"] / two["inner_seconds"]}
            rows.append(row)
    return rows


def fft_floor(device: str) -> list[dict]:
    """Seconds of the two FFTs per aperture position of one mopie epoch: every position in one
    batched FFT (the hardware's best), at the frame size mopie uses and at the full grid."""
    import torch

    from trainers.imaging.frames import auto_frame_size

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
    parser.add_argument("--ray-on-cpu", action="store_true", help="the Ray rows on 1 and 2 CPU workers (a check "
                                                                   "of this script where there is no GPU)")
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on a CPU (1: what one TorchTrainer worker on 1 CPU gets)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/gpu-<device>.json)")
    args = parser.parse_args()
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    cases = args.only or [c for c in CASES if args.device != "cpu" or c not in GPU_ONLY]
    data_dir = tempfile.mkdtemp(prefix="trainyard-gpu-data-")
    prepare_data(data_dir)
    report = {"device": _describe(args.device, args.threads), "in_process": [], "ray": [], "scaling": [], "fft_floor": []}
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
    ray_cases = [c for c in RAY_CASES if c in cases]
    if not args.skip_ray and (gpus >= 1 or args.ray_on_cpu) and ray_cases:
        import ray

        ray.init(num_gpus=gpus, include_dashboard=False)
        storage = Path(tempfile.mkdtemp(prefix="trainyard-gpu-runs-"))
        for workers in (1, 2)[:max(gpus, 2 if args.ray_on_cpu else 0)]:
            report["ray"] += through_ray(ray_cases, workers, data_dir, storage, use_gpu=gpus >= 1)
            save()
        ray.shutdown()
        report["scaling"] = scaling_rows(report["ray"])
        print_table(report["ray"], "through TorchTrainer")
        print_table(report["scaling"], "1 -> 2 GPUs")
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


def _describe(device: str, threads: int) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores, {threads} thread{'s' if threads > 1 else ''})"


if __name__ == "__main__":
    sys.exit(main())
