"""Imaging engines: quality after fixed budgets, seconds per iteration and time to quality for
`mopie` and `prism`, and `mopie` beside PtyLab's ePIE, mPIE and qNewton on the same measurements.

    python benchmarks/imaging.py [--quick] [--skip-ptylab] [--skip-prism] [--threads 1] [--repeats 3]

PtyLab is not a project dependency; for this benchmark only:
    pip install --no-deps ptylab==0.3.7 && pip install "h5py~=3.9"
Without it the PtyLab rows are skipped (with a message).

What is compared, and how (see specs/imaging.md, "Feeding PtyLab our measurements"):
- Problems: moon, 128 px object in a 256 grid, fermat pattern, noise-free: `default` (193
  apertures of 41 px, the mopie defaults) and `dense` (1381 apertures of 17 px).
- PtyLab's FPM model has ONE pupil for every aperture, so it can only be exact for apertures
  at whole-pixel centres, while our fermat centres are fractional (our engine keeps each disc's
  sub-pixel offset). For the side-by-side rows both engines therefore get the fermat centres
  rounded to whole pixels (`rounded`), simulated by our trainer; PtyLab's forward model at the
  true spectrum is checked against those frames first (asserted). `mopie` is also run on the
  unrounded product defaults (`fractional`), and on `default` with --snr 40.
- Frames (camera grid): each engine works on M x M resamplings of the same full-grid intensities.
  mopie's M is its auto size (>= d + 3: 48 px for 41 px apertures, 24 px for 17 px). PtyLab is run
  on those very arrays AND on frames of >= 2d + 2 px (96 / 36 px: every intensity sample, the
  spec's recipe for PtyLab), and the ratio is taken against its fastest engine over both.
- Quality is OUR metric for everyone: SSIM / PSNR of |object| in the object window against the
  ground truth, with the band-limited reference SSIM ("ceiling") beside it. PtyLab's FPM engines
  know nothing of the object and converge to the ceiling; mopie's support and real [0, 1]
  constraints fill in spectrum outside the measured band, so it passes the "ceiling".
- Time: wall time of the reconstruction loop only. Simulation and setup (data, initial guess)
  are excluded on both sides; our per-iteration metric evaluation is excluded (timed and
  subtracted), PtyLab's snapshot copy is included. Best (elementwise minimum) of --repeats runs,
  both sides in this one process, one thread each (torch.set_num_threads and OMP/MKL/OpenBLAS
  env vars; numpy's FFT is single-threaded anyway). The machine is shared: compare the ratios.
- Time to quality = wall time at the end of the first iteration whose SSIM reaches the target
  (iteration granularity, not interpolated): the headline ratio.
- Inside iterations (full runs only, labelled apart): mopie's SSIM after every mini-batch of 16
  and PtyLab ePIE's after every 16 scan positions (its `reconstruct_stepwise`), each on the clock
  of its updates alone (our evaluation and PtyLab's snapshot copies excluded). mPIE and qNewton
  cannot be checked inside an iteration and enter with their per-iteration times.
Prints a table and writes benchmarks/results/imaging.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

BUDGETS = (1, 5, 10, 30, 50)      # iterations at which SSIM / PSNR are reported
MARGIN = 0.01                     # time to reach ceiling - MARGIN
SPEED_GOAL = 0.1                  # the tracker's goal: our time-to-quality <= 1/10 of PtyLab's best
PROBLEMS = {"default": {}, "dense": {"n_samples": 1381, "sample_diameter": 17.0}}
FINE_ITERATIONS = 3               # budget of the runs checked inside iterations (the targets come early)
# PtyLab engines with their own defaults (betaObject 0.25 for ePIE/mPIE, 1 for qNewton), and ePIE
# with a full object step too (on `default` it is PtyLab's fastest to the ceiling): the ratio is
# taken against the fastest of them. betaProbe is 0 for all (a known pupil).
PTYLAB_RUNS = (("ePIE", {}), ("ePIE", {"betaObject": 1.0}), ("mPIE", {}), ("qNewton", {}))


def pin_threads(threads: int) -> None:
    """One thread count for both sides; the env vars must be set before numpy is imported."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


# ---------------------------------------------------------------- a run's learning curve
@dataclass
class Curve:
    """Quality after each iteration and the cumulative reconstruction seconds up to it."""
    init: dict[str, float]
    seconds: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    step_seconds: float | None = None   # seconds per iteration, when set by `fastest`

    def add(self, seconds: float, metrics: dict[str, float]) -> None:
        self.seconds.append(seconds)
        # a trainer's evaluate() reports test_*, PtyLab's rows (metrics_of) the plain names
        self.ssim.append(float(metrics.get("test_ssim", metrics.get("ssim"))))
        self.psnr.append(float(metrics.get("test_psnr", metrics.get("psnr"))))

    def time_to(self, target: float) -> dict | None:
        """First iteration whose SSIM >= target, and the seconds at its end; None if never."""
        for index, value in enumerate(self.ssim):
            if value >= target:
                return {"iterations": index + 1, "seconds": self.seconds[index]}
        return None


def fastest(curves: list[Curve]) -> Curve:
    """Repeats of one deterministic run: its quality, the smallest time seen at each iteration, and
    the smallest of the repeats' seconds per iteration."""
    first = curves[0]
    best = Curve(first.init, ssim=first.ssim, psnr=first.psnr)
    best.seconds = [min(times) for times in zip(*(c.seconds for c in curves))]
    best.step_seconds = min(seconds_per_iteration(c) for c in curves)
    return best


def seconds_per_iteration(curve: Curve) -> float:
    """Median iteration time; the first iteration (PtyLab's preparation, warm-up) is left out when
    there are others."""
    steps = [b - a for a, b in zip([0.0] + curve.seconds, curve.seconds)]
    return statistics.median(steps[1:] if len(steps) > 1 else steps)


# ---------------------------------------------------------------- our trainers
def make_trainer(algorithm: str, **overrides):
    from trainers.context import LocalContext
    from trainers.registry import get_algorithm

    spec = get_algorithm(algorithm)
    return spec.trainer_class()(spec.config_class(**overrides), LocalContext(algorithm))


def rounded_pattern(overrides: dict, folder: Path) -> str:
    """The config's fermat centres rounded to whole pixels, as a .npy pattern file."""
    import numpy as np

    from trainers.imaging import sampling
    from trainers.imaging.mopie_config import MopieConfig

    config = MopieConfig(**overrides)
    centres = sampling.generate_pattern(config.pattern, config.n_samples, config.radius_px(),
                                        seed=config.pattern_seed).round()
    if len({tuple(c) for c in centres.tolist()}) != len(centres):
        raise ValueError("rounding made two apertures coincide")
    path = folder / f"fermat_{config.n_samples}_rounded.npy"
    np.save(path, centres.numpy())
    return str(path)


def run_trainer(trainer, iterations: int) -> Curve:
    """Drive `run_iteration` (the product loop); time it minus our own metric evaluation."""
    from trainers.imaging.metrics import image_metrics

    evaluate, spent = trainer.evaluate, []

    def timed_evaluate():
        started = time.perf_counter()
        result = evaluate()
        spent.append(time.perf_counter() - started)
        return result

    trainer.evaluate = timed_evaluate
    reconstruction = trainer.engine.reconstruction() if trainer.algorithm == "mopie" else trainer.reconstruction()
    curve = Curve(init=image_metrics(reconstruction, trainer.experiment.truth, trainer.obj_size))
    total = 0.0
    for _ in range(iterations):
        started = time.perf_counter()
        metrics, _ = trainer.run_iteration()
        total += time.perf_counter() - started - spent[-1]
        curve.add(total, metrics)
        if trainer.finished:
            break
    return curve


def mopie_curve(overrides: dict, iterations: int, repeats: int) -> tuple[Curve, object]:
    """Best of `repeats` fresh runs (patience 0: the whole budget); also returns the last trainer."""
    curves = []
    for _ in range(repeats):
        trainer = make_trainer("mopie", **overrides, max_iterations=iterations, patience=0)
        curves.append(run_trainer(trainer, iterations))
    return fastest(curves), trainer


# ---------------------------------------------------------------- rows
def row(problem: str, engine: str, curve: Curve, ceiling: float, **extra) -> dict:
    """One table row: quality at the budgets, speed, time to ceiling - MARGIN."""
    # string keys, as JSON will have them
    at = {str(k): {"ssim": curve.ssim[k - 1], "psnr": curve.psnr[k - 1]} for k in BUDGETS if k <= len(curve.ssim)}
    best = max(range(len(curve.ssim)), key=curve.ssim.__getitem__)
    return {"problem": problem, "engine": engine, "ceiling_ssim": ceiling,
            "init": curve.init, "at_iteration": at, "iterations": len(curve.ssim),
            "last": {"ssim": curve.ssim[-1], "psnr": curve.psnr[-1]},
            "best": {"ssim": curve.ssim[best], "psnr": curve.psnr[best], "iteration": best + 1},
            "seconds_per_iteration": curve.step_seconds or seconds_per_iteration(curve),
            "loop_seconds": curve.seconds[-1],
            "to_ceiling_minus_margin": curve.time_to(ceiling - MARGIN),
            "curve": {"seconds": curve.seconds, "ssim": curve.ssim, "psnr": curve.psnr}, **extra}


def compare_problem(name: str, overrides: dict, args, folder: Path, ptylab) -> tuple[list[dict], dict]:
    """mopie and PtyLab on the same (rounded-centre) measurements of one problem."""
    print(f"[{name}] simulating and running mopie ...", flush=True)
    shared = {**overrides, "pattern": rounded_pattern(overrides, folder)}
    curve, trainer = mopie_curve(shared, args.mopie_iterations, args.repeats)
    rows = [row(name, "mopie", curve, trainer.ceiling, centres="rounded",
                setup_seconds=trainer.setup_seconds, frame_size=trainer.engine.frame)]
    info = {"ceiling_ssim": trainer.ceiling, "n_samples": len(trainer.positions),
            "sample_diameter": trainer.config.sample_diameter, "frame_size": trainer.engine.frame}
    if ptylab is None:
        return rows, info
    for frame in ptylab_frame_sizes(trainer):
        source = trainer if frame == trainer.engine.frame else make_trainer("mopie", **shared, frame_size=frame)
        problem = ptylab.Problem.from_trainer(source)
        error = ptylab.forward_check(problem)
        print(f"[{name}] PtyLab forward model at the true spectrum vs the {frame} px frames: relative error "
              f"max {error['max']:.2e}, median {error['median']:.2e}")
        assert error["max"] < 1e-5, f"PtyLab's forward model does not reproduce our frames ({error['max']:.2e})"
        info.setdefault("ptylab_forward_error", {})[str(frame)] = error
        readback = info.setdefault("ptylab_readback_ssim", {})[str(frame)] = ptylab.readback_check(problem)
        assert readback > 0.9999, "PtyLab's spectrum is not read back as our object"
        for engine, params in args.ptylab_runs:
            label = f"PtyLab {engine}" + "".join(f" {k}={v}" for k, v in params.items())
            print(f"[{name}] {label}, {frame} px frames ...", flush=True)
            curves = [ptylab_curve(ptylab, problem, engine, args.ptylab_iterations, params)
                      for _ in range(args.repeats)]
            rows.append(row(name, label, fastest(curves), problem.ceiling, centres="rounded", params=params,
                            frame_size=frame))
            if engine == "ePIE" and not args.quick:
                rows.append(fine_ptylab_row(name, label, ptylab, problem, params, trainer.config.batch_size, args))
    if not args.quick:
        print(f"[{name}] mopie, quality after every mini-batch ...", flush=True)
        fine = fastest([fine_run(make_trainer("mopie", **shared, max_iterations=FINE_ITERATIONS, patience=0))
                        for _ in range(args.repeats)])
        rows.append(row(name, "mopie", fine, trainer.ceiling, centres="rounded", frame_size=trainer.engine.frame,
                        granularity=f"batch of {trainer.config.batch_size}"))
    return rows, info


def fine_run(trainer) -> Curve:
    """mopie's quality after every mini-batch (the state before the epoch's constraints) and after
    every epoch, on the clock of the updates alone: the evaluations are excluded, as in
    `run_trainer`. Checks are points of this curve, not iterations."""
    from trainers.imaging.metrics import image_metrics

    engine, update, evaluate = trainer.engine, trainer.engine.update, trainer.evaluate
    curve = Curve(init=image_metrics(engine.reconstruction(), trainer.experiment.truth, trainer.obj_size))
    excluded, started = [0.0], [0.0]

    def check(measure):
        pause = time.perf_counter()
        metrics = measure()
        curve.add(pause - started[0] - excluded[0], metrics)
        excluded[0] += time.perf_counter() - pause
        return metrics

    def observed_update(*args, **kwargs):  # the engine's batch update, whatever its arguments
        error = update(*args, **kwargs)
        check(lambda: image_metrics(engine.reconstruction(), trainer.experiment.truth, trainer.obj_size))
        return error

    engine.update, trainer.evaluate = observed_update, lambda: check(evaluate)
    started[0] = time.perf_counter()
    for _ in range(trainer.config.max_iterations):
        trainer.run_iteration()
    return curve


def fine_ptylab_row(name: str, label: str, ptylab, problem, params: dict, every: int, args) -> dict:
    """PtyLab ePIE with a snapshot every `every` positions (mopie's batch), the copies off the clock."""
    print(f"[{name}] {label}, {problem.frames.shape[-1]} px frames, quality every {every} positions ...", flush=True)
    curves = []
    for _ in range(args.repeats):
        trace = ptylab.run_stepwise(problem, "ePIE", FINE_ITERATIONS, every, **params)
        curve = Curve(init=trace.init)
        for seconds, metrics in zip(trace.seconds, trace.metrics):
            curve.add(seconds, metrics)
        curves.append(curve)
    return row(name, label, fastest(curves), problem.ceiling, centres="rounded", params=params,
               frame_size=problem.frames.shape[-1], granularity=f"{every} positions")


def ptylab_frame_sizes(trainer) -> list[int]:
    """PtyLab gets the very frames our engine uses (the same arrays), and frames of >= 2d + 2 px,
    which hold every sample of the intensity (the spec's recipe for PtyLab: with fewer it needed
    more iterations). Its rows are compared at their best over both."""
    from trainers.imaging.frames import auto_frame_size

    config = trainer.config
    full = auto_frame_size(config.image_size, config.sample_diameter, full_band=True)
    return sorted({trainer.engine.frame, full})


def ptylab_curve(ptylab, problem, engine: str, iterations: int, params: dict) -> Curve:
    trace = ptylab.run(problem, engine, iterations, **params)
    curve = Curve(init=trace.init)
    for seconds, metrics in zip(trace.seconds, trace.metrics):
        curve.add(seconds, metrics)
    return curve


def fractional_rows(args, ptylab) -> tuple[list[dict], dict]:
    """mopie on the product defaults (fractional fermat centres), with and without noise; and, for
    information, PtyLab ePIE on them, where its single pupil cannot model the sub-pixel offsets."""
    rows, info = [], {}
    cases = [("default", PROBLEMS["default"], "mopie")]
    if not args.quick:
        cases += [("default", {"snr": 40.0}, "mopie --snr 40"), ("dense", PROBLEMS["dense"], "mopie")]
    for name, overrides, label in cases:
        print(f"[{name}, fractional] {label} ...", flush=True)
        curve, trainer = mopie_curve(overrides, args.mopie_iterations, args.repeats)
        rows.append(row(name, label, curve, trainer.ceiling, centres="fractional", config=overrides,
                        frame_size=trainer.engine.frame))
        if ptylab is not None and label == "mopie" and name == "default" and not args.quick:
            problem = ptylab.Problem.from_trainer(trainer)
            info["ptylab_forward_error_fractional_default"] = ptylab.forward_check(problem)
            error = info["ptylab_forward_error_fractional_default"]
            print(f"[{name}, fractional] PtyLab ePIE betaObject=1.0 (its model cannot match: forward error max "
                  f"{error['max']:.2f}, median {error['median']:.3f}) ...", flush=True)
            curve = ptylab_curve(ptylab, problem, "ePIE", args.ptylab_iterations, {"betaObject": 1.0})
            rows.append(row(name, "PtyLab ePIE betaObject=1.0", curve, problem.ceiling, centres="fractional",
                            note="PtyLab's one pupil cannot model fractional centres",
                            frame_size=trainer.engine.frame))
    return rows, info


def prism_row(args) -> dict:
    """prism at its default config (one iteration = one aperture), its default budget."""
    overrides = {"n_samples": 6} if args.quick else {}
    print(f"[prism] default config{' (quick: 6 apertures)' if args.quick else ''} ...", flush=True)
    trainer = make_trainer("prism", **overrides)
    curve = run_trainer(trainer, trainer.config.max_iterations)
    config = trainer.config
    return row("prism default", "prism", curve, trainer.ceiling, centres="fractional", config=overrides,
               setup_seconds=trainer.setup_seconds,
               problem_info=f"{config.n_samples} x {config.sample_diameter:g} px")


# ---------------------------------------------------------------- ratios
def ratios(rows: list[dict], fine: bool = False) -> list[dict]:
    """Our time-to-quality over PtyLab's best, per rounded problem, at three targets.

    `fine`: quality checked inside iterations (mopie after every batch, PtyLab ePIE every as many
    positions); PtyLab's engines that cannot be checked inside an iteration (mPIE, qNewton) take
    part with their per-iteration times, which can only favour them."""
    out = []
    for problem in PROBLEMS:
        rounded = [r for r in rows if r["problem"] == problem and r["centres"] == "rounded"]
        ours = next((r for r in rounded if r["engine"] == "mopie" and bool(r.get("granularity")) == fine), None)
        theirs = [r for r in rounded if r["engine"].startswith("PtyLab") and (fine or not r.get("granularity"))]
        if ours is None or not theirs:
            continue
        ceiling = ours["ceiling_ssim"]
        best_ptylab = max(r["best"]["ssim"] for r in theirs if not r.get("granularity"))
        targets = ((f"ceiling - {MARGIN}", ceiling - MARGIN), ("ceiling", ceiling), ("PtyLab's best SSIM", best_ptylab))
        for label, target in targets[:2] if fine else targets:
            out.append(ratio_at(problem, label, target, ours, theirs))
    return out


def ratio_at(problem: str, label: str, target: float, ours: dict, theirs: list[dict]) -> dict:
    def reach(r):
        curve = r["curve"]
        for index, value in enumerate(curve["ssim"]):
            if value >= target:
                return {"engine": r["engine"], "frame_size": r.get("frame_size"), "iterations": index + 1,
                        "seconds": curve["seconds"][index], "granularity": r.get("granularity", "iteration")}
        return None

    mine = reach(ours)
    reached = [x for x in map(reach, theirs) if x is not None]
    best = min(reached, key=lambda x: x["seconds"]) if reached else None
    value = mine["seconds"] / best["seconds"] if mine and best else None
    return {"problem": problem, "target": label, "target_ssim": target, "mopie": mine, "ptylab_best": best,
            "ratio": value, "meets_goal": None if value is None else value <= SPEED_GOAL}


# ---------------------------------------------------------------- output
def machine_info(args, ptylab_version: str | None, load_at_start: tuple) -> dict:
    import numpy
    import torch

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
            "load_average_start": load_at_start, "load_average_end": os.getloadavg(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__, "ptylab": ptylab_version,
            "threads": args.threads, "torch_threads": torch.get_num_threads(),
            "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                          "OPENBLAS_NUM_THREADS")},
            "repeats": args.repeats, "quick": args.quick}


def cell(metrics: dict | None) -> str:
    return "-" if metrics is None else f"{metrics['ssim']:.4f} {metrics['psnr']:.1f}"


def reach_cell(reach: dict | None) -> str:
    if reach is None:
        return "never"
    seconds = reach["seconds"]
    shown = f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
    return f"{shown} ({reach['iterations']})"


def short(engine: str) -> str:
    return engine.replace("betaObject=", "beta=")


def frames(r: dict) -> str:
    """The camera-grid (frame) side an engine worked on, where it has one."""
    return f"{r['frame_size']} px" if r.get("frame_size") else "-"


def label(r: dict) -> str:
    """Problem and centres, or prism's own problem size."""
    return f"{r['problem']} ({r.get('problem_info', r['centres'])})"


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    machine = results["machine"]
    console = Console(width=200)
    quality = Table(title="Quality: 'SSIM PSNR(dB)' of |object| in the object window (our metrics for every engine) "
                          "after N iterations (@N), beside the band-limited reference ('ceiling') SSIM")
    for column in ("problem (centres)", "engine", "ceiling SSIM", "init", *(f"@{k}" for k in BUDGETS), "last (it)"):
        quality.add_column(column, no_wrap=True)
    speed = Table(title=f"Speed: reconstruction loop only (no simulation, setup or metric evaluation), best of "
                        f"{machine['repeats']}, {machine['threads']} thread(s); (it) = iterations")
    for column in ("problem (centres)", "engine", "frames", "s/it", "ceiling SSIM", f"to ceiling-{MARGIN}",
                   "best SSIM (it)", "loop total"):
        speed.add_column(column, no_wrap=True)
    for r in (r for r in results["rows"] if not r.get("granularity")):
        quality.add_row(label(r), f"{short(r['engine'])} ({frames(r)})", f"{r['ceiling_ssim']:.4f}", cell(r["init"]),
                        *(cell(r["at_iteration"].get(str(k))) for k in BUDGETS), f"{cell(r['last'])} ({r['iterations']})")
        speed.add_row(label(r), short(r["engine"]), frames(r), f"{r['seconds_per_iteration']:.3f}",
                      f"{r['ceiling_ssim']:.4f}",
                      reach_cell(r["to_ceiling_minus_margin"]), f"{r['best']['ssim']:.4f} ({r['best']['iteration']})",
                      f"{r['loop_seconds']:.2f}s ({r['iterations']})")
    console.print(quality)
    console.print(speed)
    print_ratios(console, results["ratios"], "Time to quality on the same measurements, at the end of iterations: "
                 f"mopie / the fastest PtyLab engine to reach the target (goal <= {SPEED_GOAL}); (it) = iterations")
    fine = [r for r in results["rows"] if r.get("granularity")]
    if fine:
        table = Table(title="Inside iterations: quality checked after every mopie batch / as many PtyLab ePIE "
                            "positions, evaluation and snapshots off the clock; (n) = checks")
        for column in ("problem", "engine", "frames", "checked every", f"to ceiling-{MARGIN}", "first SSIM above"):
            table.add_column(column, no_wrap=True)
        for r in fine:
            reach = r["to_ceiling_minus_margin"]
            above = "-" if reach is None else f"{r['curve']['ssim'][reach['iterations'] - 1]:.4f}"
            table.add_row(r["problem"], short(r["engine"]), frames(r), r["granularity"], reach_cell(reach), above)
        console.print(table)
        print_ratios(console, results["ratios_within_iterations"],
                     "Time to quality inside iterations: mopie / the fastest PtyLab engine (ePIE checked inside "
                     "iterations; mPIE, qNewton at their iterations' ends); (n) = checks or iterations")
    for key, value in results["problems"].items():
        for name, errors in value.items():
            if not name.startswith("ptylab_forward_error"):
                continue
            for frame, error in (errors.items() if "max" not in errors else [("mopie's", errors)]):
                print(f"PtyLab forward model vs the {frame}{' px' if frame.isdigit() else ''} frames at the true "
                      f"spectrum, {key}: relative error per aperture max {error['max']:.2e}, "
                      f"median {error['median']:.2e}")


def print_ratios(console, ratios_: list[dict], title: str) -> None:
    from rich.table import Table

    if not ratios_:
        return
    table = Table(title=title)
    for column in ("problem", "target", "SSIM", "mopie", "best PtyLab", "engine", "ratio", "goal met"):
        table.add_column(column, no_wrap=True)
    for r in ratios_:
        best = r["ptylab_best"]
        table.add_row(r["problem"], r["target"], f"{r['target_ssim']:.4f}", reach_cell(r["mopie"]),
                      reach_cell(best), f"{short(best['engine'])} ({frames(best)})" if best else "-",
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                      "-" if r["meets_goal"] is None else ("yes" if r["meets_goal"] else "no"))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="default problem only, 10 iterations, prism on 6 "
                                                             "apertures (about a minute)")
    parser.add_argument("--skip-ptylab", action="store_true")
    parser.add_argument("--skip-prism", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and numpy (both sides)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per engine, best time kept (default 3; quick 1)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results file (default benchmarks/results/imaging.json; --quick: a temporary file, "
                             "so that a quick run never replaces the full results)")
    args = parser.parse_args()
    pin_threads(args.threads)
    load_at_start = os.getloadavg()  # the machine is shared: record how busy it was
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.mopie_iterations = 10 if args.quick else 30
    args.ptylab_iterations = 10 if args.quick else 50
    args.ptylab_runs = PTYLAB_RUNS

    ptylab, ptylab_version = None, None
    if not args.skip_ptylab:
        from benchmarks import ptylab_adapter

        ok, detail = ptylab_adapter.available()
        if ok:
            ptylab, ptylab_version = ptylab_adapter, detail
        else:
            print(f"PtyLab rows skipped: PtyLab is not importable ({detail}). "
                  "pip install --no-deps ptylab==0.3.7 && pip install 'h5py~=3.9'")

    folder = Path(tempfile.mkdtemp(prefix="trainyard-imaging-"))
    rows, problems = [], {}
    for name in (["default"] if args.quick else list(PROBLEMS)):
        problem_rows, problems[name] = compare_problem(name, PROBLEMS[name], args, folder, ptylab)
        rows += problem_rows
    extra_rows, problems["fractional"] = fractional_rows(args, ptylab)
    rows += extra_rows
    if not args.skip_prism:
        rows.append(prism_row(args))

    results = {"machine": machine_info(args, ptylab_version, load_at_start), "problems": problems,
               "timing": "reconstruction loop only: simulation, setup and our metric evaluation excluded; "
                         "time to quality at the end of the first iteration reaching the target",
               "rows": rows, "ratios": ratios(rows), "ratios_within_iterations": ratios(rows, fine=True)}
    output = args.output or (folder / "imaging_quick.json" if args.quick else RESULTS / "imaging.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print_tables(results)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
