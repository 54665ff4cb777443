"""`mopie`'s epoch against the FFT floor of the frames it actually transforms.

    python benchmarks/mopie_floor.py [--device cuda] [--epochs 15] [--cases default-256 1024] [--out FILE]

An epoch does two M x M FFTs (one inverse, one forward) per aperture position, M the frame
size. The floor is the time of exactly those FFTs done as well as the hardware can: all the
epoch's frames in ONE batched inverse and ONE batched forward FFT, complex64. The epoch is the
trainer's own `epoch_seconds` (median after 3 warm-up epochs, synchronised), for the batch size
of the case and for one batch holding every aperture (the fewest, largest kernels), each with
the epoch replayed as CUDA graphs (`cuda_graphs`, the default on one GPU) and eagerly. The floor
of full-grid N x N FFTs is shown beside it for reference only: it is not the work an epoch does.
The first 3 epochs are not counted (the graphs are captured in epochs 2-3).
Writes benchmarks/results/mopie_floor-<device>.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {
    "default-256": dict(max_iterations=100, patience=0),
    "1024": dict(image_size=1024, obj_size=512, n_samples=240, sample_diameter=101, batch_size=60,
                 max_iterations=100, patience=0),
}


def timed(function, device: str, repeats: int = 20) -> float:
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        function()
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    sync()
    return (time.perf_counter() - started) / repeats


def floor_seconds(count: int, side: int, device: str) -> float:
    """One batched inverse + one batched forward FFT of `count` side x side complex64 frames."""
    import torch

    data = torch.randn(count, side, side, dtype=torch.complex64, device=device)
    return timed(lambda: torch.fft.fft2(torch.fft.ifft2(data)), device)


def epoch_seconds(overrides: dict, device: str, epochs: int) -> tuple[float, dict]:
    import torch

    from trainers.context import LocalContext
    from trainers.imaging.mopie import MopieTrainer
    from trainers.imaging.mopie_config import MopieConfig

    trainer = MopieTrainer(MopieConfig(**overrides), LocalContext("mopie", None, device=device, resume=False))
    times = []
    for _ in range(epochs):
        metrics = trainer.step()  # the epoch alone (float(error) synchronises)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(metrics["epoch_seconds"])
        trainer.iteration += 1  # a new visiting order each epoch, as in a run
    info = {"frame_size": trainer.engine.frame, "positions": int(trainer.engine.index.shape[0] * trainer.engine.index.shape[1]),
            "grid": trainer.config.image_size, "batch_size": trainer.config.batch_size}
    return statistics.median(times[3:]), info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    import torch

    rows = []
    for case in args.cases:
        overrides = CASES[case]
        for batch in (overrides.get("batch_size", 16), overrides.get("n_samples", 193)):
            floor = full = None
            for graphs in (True, False):
                settings = {**overrides, "batch_size": batch, "cuda_graphs": graphs}
                seconds, info = epoch_seconds(settings, args.device, args.epochs)
                if floor is None:
                    floor = floor_seconds(info["positions"], info["frame_size"], args.device)
                    full = floor_seconds(info["positions"], info["grid"], args.device) if info["grid"] <= 1024 else None
                rows.append({"case": case, **info, "cuda_graphs": graphs and args.device.startswith("cuda"),
                             "epoch_seconds": seconds, "frame_fft_floor_seconds": floor,
                             "epoch_over_floor": seconds / floor, "fullgrid_fft_floor_seconds": full})
                print(json.dumps(rows[-1]), flush=True)
    print(f"{'case':12} {'batch':>5} {'graphs':>6} {'epoch ms':>9} {'floor ms':>9} {'x floor':>8}")
    for row in rows:
        print(f"{row['case']:12} {row['batch_size']:5d} {str(row['cuda_graphs']):>6} {1e3 * row['epoch_seconds']:9.3f} "
              f"{1e3 * row['frame_fft_floor_seconds']:9.4f} {row['epoch_over_floor']:8.1f}")
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    report = {"device": device, "torch": torch.__version__, "rows": rows}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"mopie_floor-{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
