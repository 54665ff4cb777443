"""Tune overhead: a search of N tiny trials of one of our algorithms beside a bare Ray Tune
function trainable that spins for the same trainer time per trial, then the same search
interrupted half-way and resumed.

    python benchmarks/tune_overhead.py [--trials 200] [--cpus N] [--algorithm mopie]
        [--iterations 3] [--interrupt-at 0.5] [--own-data-trials 20] [--set KEY=VALUE ...] [--out PATH]

One local Ray in this process (`--cpus` of them; default: all) runs, one after the other:
1. trainyard: `tune.py --algorithm ALGORITHM --num-samples N --scheduler fifo` in-process, its
   data built once by the driver (the default);
2. bare: a Ray Tune function trainable, 1 CPU per trial, as many at once, that imports torch
   (as any PyTorch trainable does, once per process: Tune reuses it) and spins for each
   trainyard trial's own measured work (its setup_seconds, then each iteration's
   iteration_seconds, reporting after each, the last one with the trial's final_seconds, its
   held-out evaluation of the selected state) and does nothing else: no checkpoints, no files
   of its own; Tune runs it as it comes, writing its default result files (CSV, JSON and
   TensorBoard); before its search the bare driver spins for the time one build of the shared
   data takes (measured on the same config), the work tune.py's driver does once before its
   trials; then the same bare search again without Tune's result files (reported beside);
3. own data (`--own-data-trials`, 0 skips it): a search whose space varies a data key (the
   pattern seed, which the default pattern does not even read), so that every trial builds its
   own data: its setup_seconds beside those of 1.
Wall times exclude Ray's start and the import of Ray Tune (shared by both), and a first search
of idle trials runs before any timing (Tune imports much of itself at its first search). The
trainyard driver's own imports (its trainers, pydantic configs, matplotlib) are paid in the first
repeat only: that repeat is reported beside the median. The ratio is trainyard's wall time over bare's;
overhead per trial is (wall - ideal) x CPUs / N, the ideal being the shared data's build plus
trainer work / CPUs: the figure Ray's own release test
quotes (about 0.14 s per trial per CPU for 10,000 one-second trials on 16 CPUs).
4. resume (`--interrupt-at F`, 0 skips it): after Ray is shut down, `tune.py` as a child process
   with its own Ray, sent SIGINT once F x N trials have finished, then `tune.py --resume`; it
   reports the time to restore (the resumed command's start to its first new result, beside the
   first command's start to its first result: both include a Ray start) and checks that no trial
   finished before the interrupt ran again (its result file unchanged, no new trial folder).
Memory: the peak of the whole process tree (summed RSS, and PSS), sampled every second, per phase;
the driver's own CPU seconds per phase (with many CPUs, the driver's work per trial is what
bounds trials per second).

Writes benchmarks/results/tune_overhead.json (or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from load_tune import MemorySampler  # noqa: E402  (one sampler for both benchmarks)

RESULTS = ROOT / "benchmarks" / "results"


def spin(seconds: float) -> None:
    """Busy for `seconds` of wall time, as a trainer is (a sleep would leave the CPU to Ray)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def bare_trial(config: dict, work: list) -> None:
    import ray.tune
    import torch  # noqa: F401  (what a PyTorch trainable imports in its process, once: as ours do)

    setup, iterations, final = work[config["index"]]
    spin(setup)
    for iteration, seconds in enumerate(iterations, 1):
        spin(seconds + (final if iteration == len(iterations) else 0.0))
        ray.tune.report({"iteration": iteration, "metric": float(iteration)})


def trial_work(table) -> list[tuple[float, list[float], float]]:
    """Each trial's own work: its setup, each iteration (from the trial's progress.csv: every
    report carries its iteration's `iteration_seconds`; the final one repeats the last
    iteration's with the summary, and is that iteration), and the held-out evaluation of the
    selected state at the end (`final_seconds`)."""
    import pandas as pd

    work = []
    finals = table["final_seconds"] if "final_seconds" in table else [0.0] * len(table)
    for path, setup, final in zip(table["path"], table["setup_seconds"], finals):
        history = pd.read_csv(Path(path) / "progress.csv")
        work.append((float(setup), [float(s) for s in history["iteration_seconds"]], float(final)))
    return work


def summary(values: list[float]) -> dict:
    values = sorted(values)
    return {"median": round(statistics.median(values), 4), "p10": round(values[len(values) // 10], 4),
            "p90": round(values[(9 * len(values)) // 10], 4), "n": len(values)}


def search_options(args, storage: Path, name: str, trials: int) -> list[str]:
    """tune.py's options for every search here: FIFO, the tiny budget, no early stop, the --set pairs."""
    return ["--algorithm", args.algorithm, "--num-samples", str(trials), "--scheduler", "fifo",
            "--storage", str(storage), "--name", name, "--set", f"max_iterations={args.iterations}",
            "--set", "patience=0", *[item for setting in args.set for item in ("--set", setting)]]


def run_trainyard(args, storage: Path, name: str, extra: list[str]) -> tuple[dict, object]:
    import pandas as pd

    import tune

    sampler = MemorySampler()
    sampler.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    code = tune.main([*search_options(args, storage, name, args.trials if not extra else 1), *extra])
    wall, driver_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    memory = sampler.stop()
    table = pd.read_csv(storage / name / "trials.csv")
    if code != 0 or not (table["status"] == "TERMINATED").all():
        raise SystemExit(f"the trainyard search {name} exited {code}: {table['status'].value_counts().to_dict()}")
    return {"wall_seconds": wall, "driver_cpu_seconds": round(driver_cpu, 2), "memory": memory, "trials": len(table),
            "setup_seconds": summary(list(table["setup_seconds"])),
            "shared_data": table["shared_data"].value_counts().to_dict() if "shared_data" in table else {}}, table


def shared_data_seconds(args) -> float:
    """What building the search's shared data once takes (tune.py does it in the driver before
    the trials start, instead of in every trial's setup): measured here on the same config."""
    from trainers.config import overrides_from_sets
    from trainers.registry import get_algorithm

    spec = get_algorithm(args.algorithm)
    config = spec.config_class(max_iterations=args.iterations, patience=0, **overrides_from_sets(args.set))
    trainer_class = spec.trainer_class()
    started = time.perf_counter()
    trainer_class.build_shared_data(config)
    return time.perf_counter() - started


def run_bare(args, storage: Path, work: list, concurrency: int, shared_build: float, name: str,
             loggers: bool) -> dict:
    """`loggers`: Tune as it comes, with the CSV, JSON and TensorBoard result files it writes by
    default; else with none (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS, which tune.py sets in this
    process for its own search, where it names its CSV and JSON loggers itself)."""
    from ray import tune

    from distributed.tune import environment

    sampler = MemorySampler()
    with environment({"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": None if loggers else "1"}):
        sampler.start()
        started, cpu_started = time.perf_counter(), time.process_time()
        spin(shared_build)  # the driver's build of the shared data, as tune.py does before its trials
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(bare_trial, work=work), {"CPU": 1}),
            param_space={"index": tune.grid_search(list(range(len(work))))},
            tune_config=tune.TuneConfig(metric="metric", mode="max", max_concurrent_trials=concurrency,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0))
        grid = tuner.fit()
        wall, driver_cpu = time.perf_counter() - started, time.process_time() - cpu_started
        memory = sampler.stop()
    errors = sum(1 for result in grid if result.error)
    if errors:
        raise SystemExit(f"{errors} bare trials failed")
    return {"wall_seconds": wall, "driver_cpu_seconds": round(driver_cpu, 2), "memory": memory, "trials": len(grid)}


# ----- resume ----------------------------------------------------------------------------------
def finished_trials(experiment: Path) -> dict[str, str]:
    """Trial folder -> hash of its result file, for the trials whose last result is final."""
    finished = {}
    for result_file in experiment.glob("*/result.json"):
        try:
            lines = result_file.read_text().splitlines()
            last = json.loads(lines[-1]) if lines else {}
        except (OSError, ValueError):
            continue  # being written
        if last.get("done"):
            finished[result_file.parent.name] = hashlib.sha1("\n".join(lines).encode()).hexdigest()
    return finished


def result_files(experiment: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime for p in experiment.glob("*/result.json")}


def command(args, storage: Path, name: str, *extra: str) -> list[str]:
    # tune.py starts its own Ray on every core: --cpus caps the trials at once instead
    return [sys.executable, str(ROOT / "tune.py"), *search_options(args, storage, name, args.trials),
            *(["--max-concurrent", str(args.cpus)] if args.cpus else []), *extra]


def first_new_result(process: subprocess.Popen, experiment: Path, before: dict[str, float], started: float) -> float:
    """Seconds from `started` until a trial's result file appears or changes (None if the
    process ended first)."""
    while process.poll() is None:
        now = result_files(experiment) if experiment.is_dir() else {}
        if any(name not in before or mtime != before[name] for name, mtime in now.items()):
            return time.perf_counter() - started
        time.sleep(0.05)
    return None


def run_resume(args, storage: Path) -> dict:
    name = "resume"
    experiment = storage / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = open(storage / "resume.log", "w")
    started = time.perf_counter()
    first = subprocess.Popen(command(args, storage, name), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    first_result = first_new_result(first, experiment, {}, started)
    target = max(1, int(args.interrupt_at * args.trials))
    while first.poll() is None and len(finished_trials(experiment)) < target:
        time.sleep(0.1)
    interrupted_at = time.perf_counter() - started
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the search and returns
    first_code = first.wait(timeout=300)
    first_wall = time.perf_counter() - started
    before = finished_trials(experiment)
    files_before = result_files(experiment)

    started = time.perf_counter()
    second = subprocess.Popen(command(args, storage, name, "--resume"), stdout=log, stderr=subprocess.STDOUT,
                              env=env, cwd=ROOT)
    resumed_result = first_new_result(second, experiment, files_before, started)
    second_code = second.wait(timeout=3600)
    resume_wall = time.perf_counter() - started
    log.close()
    after = finished_trials(experiment)
    rerun = sorted(trial for trial, digest in before.items() if after.get(trial) != digest)
    restored_line = [line for line in (storage / "resume.log").read_text().splitlines() if "restored" in line]
    return {
        "interrupt_after_finished_trials": target,
        "first_exit_code": first_code,                  # 130: interrupted, state saved
        "first_seconds_to_first_result": round(first_result or float("nan"), 2),
        "first_seconds_to_interrupt": round(interrupted_at, 2),
        "first_wall_seconds": round(first_wall, 2),
        "finished_before_resume": len(before),
        "resume_exit_code": second_code,
        "resume_seconds_to_first_new_result": round(resumed_result or float("nan"), 2),
        "resume_wall_seconds": round(resume_wall, 2),
        "restore_report": restored_line[-1].strip() if restored_line else "",
        "finished_after_resume": len(after),
        "trial_folders_after_resume": len(result_files(experiment)),
        "finished_trials_run_again": rerun,
    }


def machine(cpus: float) -> dict:
    return {"cpu_cores": psutil.cpu_count(), "ray_cpus": cpus, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def per_trial_overhead(wall: float, ideal: float, cpus: float, trials: int) -> float:
    """(wall - the ideal: the shared data built, then all CPUs busy with trainer work) x CPUs / trials."""
    return (wall - ideal) * cpus / trials


def idle_trial(config: dict) -> None:
    import ray.tune

    ray.tune.report({"iteration": 1, "metric": 0.0})


def warm_up_tune(storage: Path, concurrency: int) -> None:
    """A search of trials that do nothing, before any timing: Tune imports much of itself at its
    first search (its controller, loggers, reporters), which would otherwise fall on whichever
    side ran first."""
    from ray import tune

    tune.Tuner(tune.with_resources(idle_trial, {"CPU": 1}),
               param_space={"index": tune.grid_search(list(range(concurrency)))},
               run_config=tune.RunConfig(name="warm-up", storage_path=str(storage), verbose=0)).fit()


def side_by_side(args, cpus: float, shared_build: float, work: list, trainyard: dict, bare: dict,
                 bare_quiet: dict) -> dict:
    """One repeat: the three searches' figures against the ideal (the shared data built, then
    every CPU busy with this repeat's trainer work) and trainyard's wall over each bare one's."""
    work_seconds = sum(setup + sum(iterations) + final for setup, iterations, final in work)
    ideal = shared_build + work_seconds / cpus
    for entry in (trainyard, bare, bare_quiet):
        wall = entry["wall_seconds"]
        entry["trials_per_minute"] = round(args.trials / wall * 60, 1)
        entry["overhead_per_trial_seconds"] = round(per_trial_overhead(wall, ideal, cpus, args.trials), 4)
        entry["wall_seconds"] = round(wall, 2)
    return {
        "trainer_work_seconds_total": round(work_seconds, 2),
        "trainer_work_seconds_per_trial": summary([s + sum(i) + f for s, i, f in work]),
        "ideal_wall_seconds": round(ideal, 2),
        "trainyard": trainyard,
        "bare": bare,
        "bare_without_loggers": bare_quiet,
        "wall_ratio": round(trainyard["wall_seconds"] / bare["wall_seconds"], 3),
        "wall_ratio_to_bare_without_loggers": round(trainyard["wall_seconds"] / bare_quiet["wall_seconds"], 3),
        "overhead_per_trial_over_bare_seconds": round(
            (trainyard["wall_seconds"] - bare["wall_seconds"]) * cpus / args.trials, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--cpus", type=int, default=None, help="Ray's CPUs (default: every core)")
    parser.add_argument("--algorithm", default="mopie")
    parser.add_argument("--iterations", type=int, default=3, help="iterations per trial")
    parser.add_argument("--own-data-trials", type=int, default=20,
                        help="trials of the search where each builds its own data (0: skip)")
    parser.add_argument("--interrupt-at", type=float, default=0.5,
                        help="fraction of the trials finished when the resume phase interrupts (0: skip)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="trainyard / bare / bare-without-loggers rounds, one after the other; the median is quoted")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config value of every trial, as tune.py --set (e.g. a smaller problem, so that "
                             "Tune's own work per trial dominates on few cores)")
    parser.add_argument("--out", default=str(RESULTS / "tune_overhead.json"))
    args = parser.parse_args()
    if args.trials < 1 or args.iterations < 1 or args.repeats < 1 or not 0 <= args.interrupt_at < 1:
        parser.error("--trials, --iterations and --repeats must be >= 1, --interrupt-at in [0, 1)")

    import logging

    import ray
    import torch

    torch.set_num_threads(1)  # the driver as a trial process: one thread
    load_before = os.getloadavg()
    # the dashboard where its packages are installed (as tune.py's own start does)
    ray.init(num_cpus=args.cpus, include_dashboard=None, dashboard_host="127.0.0.1", log_to_driver=False,
             logging_level=logging.WARNING)
    cpus = ray.cluster_resources()["CPU"]
    import ray.tune  # noqa: F401  (both drivers import Tune: outside both timings, as Ray's start is)
    concurrency = int(min(cpus, args.trials))
    shared_build = shared_data_seconds(args)
    repeats = []
    with tempfile.TemporaryDirectory(prefix="tune-overhead-") as folder:
        storage = Path(folder)
        warm_up_tune(storage, concurrency)
        for repeat in range(args.repeats):
            trainyard, table = run_trainyard(args, storage, f"trainyard-{repeat}", [])
            work = trial_work(table)
            bare = run_bare(args, storage, work, concurrency, shared_build, f"bare-{repeat}", loggers=True)
            bare_quiet = run_bare(args, storage, work, concurrency, shared_build, f"bare-no-loggers-{repeat}",
                                  loggers=False)
            repeats.append(side_by_side(args, cpus, shared_build, work, trainyard, bare, bare_quiet))
            print(f"repeat {repeat + 1}/{args.repeats}: wall ratio {repeats[-1]['wall_ratio']:.3f}", flush=True)
        own = None
        if args.own_data_trials:
            own_result, _ = run_trainyard(args, storage, "own-data", [
                "--grid", f"pattern_seed={list(range(args.own_data_trials))}"])
            own = {"trials": own_result["trials"], "setup_seconds": own_result["setup_seconds"],
                   "shared_data": own_result["shared_data"]}
        ray.shutdown()
        resume = run_resume(args, storage) if args.interrupt_at else None

    ratios = [entry["wall_ratio"] for entry in repeats]
    typical = sorted(repeats, key=lambda entry: entry["wall_ratio"])[(len(repeats) - 1) // 2]
    result = {
        "benchmark": "tune_overhead",
        "machine": machine(cpus),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "ray": ray.__version__, "torch": torch.__version__,
        "settings": {"algorithm": args.algorithm, "trials": args.trials, "iterations": args.iterations,
                     "set": args.set,
                     "scheduler": "fifo", "concurrency": concurrency, "repeats": args.repeats},
        "shared_data_build_seconds": round(shared_build, 3),
        "wall_ratio_median": round(statistics.median(ratios), 3),
        "wall_ratio_range": [min(ratios), max(ratios)],
        "wall_ratio_first_repeat": ratios[0],  # the trainyard driver's imports paid here only
        "wall_ratio_to_bare_without_loggers_median": round(
            statistics.median(entry["wall_ratio_to_bare_without_loggers"] for entry in repeats), 3),
        # the repeat whose ratio is the median (the lower middle one of an even count), in full
        "median_repeat": repeats.index(typical) + 1,
        **typical,
        "repeats": repeats,
        "own_data": own,
        "resume": resume,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    settings = result["settings"]
    table = Table(title=f"{settings['trials']} trials of {settings['algorithm']} x {settings['iterations']} "
                        f"iterations on {result['machine']['ray_cpus']:g} CPUs, the median of "
                        f"{settings['repeats']} repeats (repeat {result['median_repeat']}) "
                        f"(trainer work {result['trainer_work_seconds_per_trial']['median']:.3f} s per trial)")
    for column in ("", "wall s", "trials/min", "overhead s/trial", "driver CPU s", "peak RSS MB", "peak PSS MB"):
        table.add_column(column)
    for side in ("trainyard", "bare", "bare_without_loggers"):
        entry = result[side]
        table.add_row(side.replace("_", " "), f"{entry['wall_seconds']:.1f}", f"{entry['trials_per_minute']:.1f}",
                      f"{entry['overhead_per_trial_seconds']:.3f}", f"{entry['driver_cpu_seconds']:.1f}",
                      f"{entry['memory']['rss_mb']:.0f}",
                      f"{entry['memory']['pss_mb']:.0f}")
    Console(width=120).print(table)
    each = ", ".join(f"{entry['wall_ratio']:.3f}" for entry in result["repeats"])
    print(f"wall ratio trainyard / bare, median of the repeats: {result['wall_ratio_median']:.3f} (each, the first "
          f"with trainyard's driver imports: {each}); "
          f"against bare without loggers: {result['wall_ratio_to_bare_without_loggers_median']:.3f}")
    print(f"this repeat: wall ratio trainyard / bare: {result['wall_ratio']:.3f} (bare without loggers: "
          f"{result['wall_ratio_to_bare_without_loggers']:.3f}); trainyard's extra per trial: "
          f"{result['overhead_per_trial_over_bare_seconds']:.3f} s")
    print(f"setup_seconds median: {result['trainyard']['setup_seconds']['median']:.3f} s (shared data)"
          + (f", {result['own_data']['setup_seconds']['median']:.3f} s (each trial its own)" if result["own_data"] else ""))
    if result["resume"]:
        resume = result["resume"]
        print(f"resume: {resume['finished_before_resume']} trials finished at the interrupt, "
              f"{len(resume['finished_trials_run_again'])} of them ran again; first new result "
              f"{resume['resume_seconds_to_first_new_result']} s after the resume started (first run: "
              f"{resume['first_seconds_to_first_result']} s); {resume['restore_report']}")


if __name__ == "__main__":
    sys.exit(main())
