"""One training run of one algorithm through Ray Train's TorchTrainer.

    python run.py --algorithm ALGORITHM [--config FILE.yaml] [--set key=value ...]
        [--workers N] [--gpus-per-worker G] [--storage DIR] [--resume] [--address ADDR] [--wandb] [--mlflow]
        [--verbose]
    python run.py --algorithm ALGORITHM --actors N    (an algorithm's own Ray actors, where it has them)
    python run.py --algorithm package.module:Class     (a Trainer subclass or Algorithm, not packaged)

Exit codes: 0 done, 1 training failed, 2 bad input (message names the field).
On a cluster: ray submit cluster.yaml run.py -- --algorithm NAME
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from cli_common import (EXIT_FAILED, EXIT_OK, assemble_config, config_error_types, fail,
                        require_minimums, start_ray, summary_order)
from trainers.checkpoint import CheckpointError, load_checkpoint
from trainers.registry import algorithm_names, get_algorithm, run_name_prefix


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="algorithms: " + ", ".join(algorithm_names()))
    parser.add_argument("--algorithm", required=True,
                        help="a registered name (" + ", ".join(algorithm_names()) + ") or package.module:Class")
    parser.add_argument("--config", help="YAML file of config keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable); the value is read as YAML")
    parser.add_argument("--workers", type=int, default=1, help="TorchTrainer workers (DDP when > 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--actors", type=int, help="for an algorithm that starts Ray actors of its own: N of them, "
                                                   "spread over the cluster's nodes")
    parser.add_argument("--storage", default=os.environ.get("TRAINYARD_STORAGE", "results"),
                        help="where runs, checkpoints and logs go: a folder (NFS on a cluster) or s3://BUCKET/PREFIX "
                             "(endpoint and credentials from the AWS variables; default: $TRAINYARD_STORAGE "
                             "or ./results)")
    parser.add_argument("--name", help="run name (default: ALGORITHM_TIMESTAMP)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest run of this algorithm in --storage (or --name)")
    parser.add_argument("--from-checkpoint", metavar="PATH",
                        help="start from a checkpoint folder or state.pt of the same algorithm")
    parser.add_argument("--address", help="Ray cluster to join ('auto' on a cluster node); default RAY_ADDRESS or a local Ray")
    parser.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the last checkpoint")
    parser.add_argument("--keep-checkpoints", type=int, default=2, help="best K checkpoints kept (the latest always)")
    parser.add_argument("--wandb", action="store_true", help="log to W&B (offline unless WANDB_API_KEY is set)")
    parser.add_argument("--mlflow", action="store_true",
                        help="log to MLflow: $MLFLOW_TRACKING_URI, else ./mlruns; experiment $MLFLOW_EXPERIMENT_NAME "
                             "or the algorithm's name")
    parser.add_argument("--verbose", action="store_true",
                        help="Ray's own output and a line per iteration, instead of one progress line")
    args = parser.parse_args(argv)
    require_minimums(parser, [("--workers", args.workers, 1), ("--max-failures", args.max_failures, 0),
                              ("--keep-checkpoints", args.keep_checkpoints, 1),
                              ("--gpus-per-worker", args.gpus_per_worker, 0)])
    return args


def latest_run_name(storage, prefix: str) -> str | None:
    runs = storage.run_folders(f"{prefix}_", "checkpoint_manager_snapshot.json")
    return max(runs, key=lambda run: run[1])[0] if runs else None


def choose_run_name(args: argparse.Namespace, storage, spec) -> str:
    if args.name:
        return args.name
    prefix = run_name_prefix(spec)
    if args.resume:
        name = latest_run_name(storage, prefix)
        if name is None:
            raise ValueError(f"--resume: no earlier run of {spec.name} with a checkpoint in {storage.show()}")
        return name
    return f"{prefix}_{datetime.now():%Y%m%d-%H%M%S}"


def print_summary(result, storage, run_name: str, seconds: float, metric: str) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = result.metrics or {}
    table = Table(title=f"{run_name}: finished in {seconds:.1f} s", show_header=True)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key in summary_order(metrics):
        value = metrics[key]
        if isinstance(value, float):
            table.add_row(key + ("  <- metric" if key == metric else ""), f"{value:.5g}")
    table.add_row("best iteration", str(int(metrics.get("best_iteration", 0))))
    table.add_row("wall time (s)", f"{seconds:.1f}")
    table.add_row("checkpoint (latest)", result.checkpoint.path if result.checkpoint else "none")
    best = getattr(result, "best_checkpoints", None) or []
    if best:
        table.add_row("best checkpoints", ", ".join(Path(c.path).name for c, _ in best))
    table.add_row("TensorBoard", f"tensorboard --logdir {storage.show(run_name, 'tensorboard')}")
    table.add_row("figures", storage.show(run_name, "figures"))
    reconstruction = storage.local / run_name / "reconstruction" if storage.local else None
    if reconstruction is not None and reconstruction.is_dir():  # the reconstruction as data, where one is written
        table.add_row("reconstruction", f"{reconstruction}: " + ", ".join(sorted(p.name for p in reconstruction.iterdir())))
    Console(width=140).print(table)


def write_summary(result, storage, run_name: str, seconds: float, plan, metric: str) -> None:
    """<run>/summary.json: the final metrics and what the run had, for scripts (atomic)."""
    import tempfile

    from trainers.checkpoint import write_json_atomic

    metrics = {key: value for key, value in (result.metrics or {}).items() if isinstance(value, (int, float))}
    summary = {"metric": metric, "metrics": metrics, "wall_seconds": seconds, "workers": plan.workers,
               "cpus_per_worker": plan.cpus_per_worker, "gpus_per_worker": plan.gpus_per_worker,
               "checkpoint": result.checkpoint.path if result.checkpoint else None}
    if not storage.remote:
        write_json_atomic(summary, storage.local / run_name / "summary.json")
        return
    with tempfile.TemporaryDirectory(prefix="trainyard-summary-") as folder:
        write_json_atomic(summary, Path(folder) / "summary.json")
        storage.upload(Path(folder), run_name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from distributed.resources import (ResourceError, check_local_gpus, cluster_totals, largest_node_cpus,
                                       plan_with_parts, ray_parts_of)
    from distributed.storage import resolve as resolve_run_storage

    try:
        spec, config = assemble_config(args.algorithm, args.config, args.set + actor_sets(args))
        spec.trainer_class()  # a trainer that cannot be imported is bad input, said before Ray starts
        if not (args.address or _ray_address_set()):
            check_local_gpus(args.gpus_per_worker)
        initial = None
        if args.from_checkpoint:
            load_checkpoint(args.from_checkpoint, spec.name)  # checked here, at the edge
            initial = args.from_checkpoint
        storage = resolve_run_storage(args.storage)
        run_name = choose_run_name(args, storage, spec)
    except config_error_types() + (ResourceError, CheckpointError, ValueError) as error:
        return fail(str(error))

    start_ray(args.address, args.verbose)
    try:  # what the run needs against what the cluster has, before asking Ray for it (no hang)
        cpus, gpus = cluster_totals()
        parts = ray_parts_of(spec, config, args.workers, args.gpus_per_worker)
        plan = plan_with_parts(args.workers, args.gpus_per_worker, cpus, gpus, parts, largest_node_cpus())
    except ResourceError as error:
        return fail(str(error))

    from contextlib import nullcontext

    from ray.train import Checkpoint, TrainingFailedError

    from distributed.progress import RunProgress
    from distributed.train import build_torch_trainer

    mlflow = open_mlflow_run(args, spec, config, run_name)
    progress = None if args.verbose else RunProgress(run_name, config.max_iterations, config.metric)
    trainer = build_torch_trainer(
        spec, config, plan, storage, run_name, use_wandb=args.wandb,
        keep_checkpoints=args.keep_checkpoints, max_failures=args.max_failures,
        resume_from=Checkpoint.from_directory(str(_checkpoint_folder(initial))) if initial else None,
        mlflow=mlflow, progress=progress.board if progress else None,
    )
    actors = f", {parts.describe()}" if parts else ""
    print(f"run {run_name}: {spec.name}, {plan.workers} worker(s) x {plan.cpus_per_worker:g} CPU"
          f"{f' + {plan.gpus_per_worker:g} GPU' if plan.gpus_per_worker else ''}{actors}, storage {storage.show()}",
          flush=True)
    started = time.perf_counter()
    try:
        with progress or nullcontext():
            result = trainer.fit()
    except TrainingFailedError as error:
        if mlflow:
            from trainers import mlflow_tracking

            mlflow_tracking.finish_run(mlflow, run_name, None, status="FAILED")
        return fail(f"training failed: {str(error).strip().splitlines()[0]}", EXIT_FAILED)
    seconds = time.perf_counter() - started
    print_summary(result, storage, run_name, seconds, config.metric)
    write_summary(result, storage, run_name, seconds, plan, config.metric)
    if mlflow:
        from trainers import mlflow_tracking

        mlflow_tracking.finish_run(mlflow, run_name, result.checkpoint.path if result.checkpoint else None)
    return EXIT_OK


def open_mlflow_run(args: argparse.Namespace, spec, config, run_name: str) -> dict[str, str] | None:
    """--mlflow: this run's MLflow run (the same one again on --resume), its params the config."""
    if not args.mlflow:
        return None
    from trainers import mlflow_tracking

    settings = mlflow_tracking.tracking(os.environ.get("MLFLOW_EXPERIMENT_NAME") or run_name_prefix(spec))
    return mlflow_tracking.open_run(settings, run_name, run_name, config.model_dump(), tags={"algorithm": spec.name})


def actor_sets(args: argparse.Namespace) -> list[str]:
    """`--actors N`: the config keys that the algorithm's Ray-parts hook says it means."""
    if args.actors is None:
        return []
    if args.actors < 1:
        raise ValueError(f"--actors must be >= 1, got {args.actors}")
    hook = get_algorithm(args.algorithm).ray_parts()
    if hook is None or not hasattr(hook, "actor_settings"):
        raise ValueError(f"--actors: {args.algorithm} starts no Ray actors of its own")
    return hook.actor_settings(args.actors)


def _ray_address_set() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def _checkpoint_folder(path: str) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


if __name__ == "__main__":
    sys.exit(main())
