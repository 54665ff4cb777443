"""Load: a Tune search of many mopie trials on this machine, queued behind the CPUs it has.

    python benchmarks/load_tune.py [--trials 32] [--max-iterations 5] [--scheduler fifo]

Starts a local Ray in this process (so that every Ray process is a descendant of this one),
runs `tune.py --algorithm mopie` in-process, samples the memory of the whole process tree while
it runs, and writes benchmarks/results/load_tune.json: wall time, trials per minute, how the
trials ended, peak memory (summed RSS, which counts shared pages once per process, and summed
PSS, which shares them out), peak object-store use and peak system memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
MB = 1024 * 1024


class MemorySampler(threading.Thread):
    """Peak memory of this process and all its descendants (Ray's GCS, raylet, dashboard,
    trial workers...), sampled every `every` seconds until stopped."""

    def __init__(self, every: float = 1.0):
        super().__init__(daemon=True)
        self.every, self.halt = every, threading.Event()
        self.peak = {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0, "system_used_mb": 0.0, "object_store_used_mb": 0.0}
        self.system_before_mb = psutil.virtual_memory().used / MB

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.every)

    def sample(self) -> None:
        me = psutil.Process()
        rss = pss = 0
        processes = [me, *me.children(recursive=True)]
        for process in processes:
            try:
                info = process.memory_full_info()  # reads smaps: PSS as well as RSS
                rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
            except psutil.Error:
                continue
        self._raise("rss_mb", rss / MB)
        self._raise("pss_mb", pss / MB)
        self._raise("processes", len(processes))
        self._raise("system_used_mb", psutil.virtual_memory().used / MB)
        self._raise("object_store_used_mb", object_store_used() / MB)

    def _raise(self, key: str, value: float) -> None:
        self.peak[key] = max(self.peak[key], value)

    def stop(self) -> dict:
        self.halt.set()
        self.join()
        peak = {key: round(value, 1) for key, value in self.peak.items()}
        return {**peak, "system_used_before_mb": round(self.system_before_mb, 1)}


def object_store_used() -> float:
    import ray

    if not ray.is_initialized():
        return 0.0
    total = ray.cluster_resources().get("object_store_memory", 0.0)
    return max(0.0, total - ray.available_resources().get("object_store_memory", total))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--max-iterations", type=int, default=5, help="iterations per trial (mopie epochs)")
    parser.add_argument("--scheduler", default="fifo", choices=("fifo", "asha"),
                        help="fifo: every trial runs all its iterations (the same work each time)")
    parser.add_argument("--out", default=str(RESULTS / "load_tune.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import pandas as pd

    import tune
    from cli_common import start_ray

    sampler = MemorySampler()
    load_before = os.getloadavg()
    started = time.perf_counter()
    sampler.start()
    start_ray(None)  # local Ray in this process: its processes are our descendants
    ray_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="load-tune-") as storage:
        search_started = time.perf_counter()
        code = tune.main(["--algorithm", "mopie", "--num-samples", str(args.trials), "--scheduler", args.scheduler,
                          "--storage", storage, "--name", "load", "--set", f"max_iterations={args.max_iterations}"])
        search_seconds = time.perf_counter() - search_started
        table = pd.read_csv(Path(storage) / "load" / "trials.csv")
    memory = sampler.stop()
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    ray.shutdown()
    result = {
        "device": f"{psutil.cpu_count()}-core CPU machine (no GPU), shared with other work",
        "ray_cpus": cpus,
        "trials": args.trials,
        "max_iterations": args.max_iterations,
        "scheduler": args.scheduler,
        "exit_code": code,
        "status": table["status"].value_counts().to_dict(),
        "iterations_run": int(table["training_iteration"].sum()),
        "ray_start_seconds": round(ray_seconds, 1),
        "search_wall_seconds": round(search_seconds, 1),
        "trials_per_minute": round(args.trials / search_seconds * 60, 2),
        "peak_memory": memory,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0 if code == 0 and (table["status"] == "TERMINATED").all() and len(table) == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
