"""One training run of one algorithm through Ray Train's TorchTrainer.

    python run.py --algorithm gat-advanced [--config FILE.yaml] [--set key=value ...]
        [--workers N] [--gpus-per-worker G] [--storage DIR] [--resume] [--address ADDR] [--wandb]
    python run.py --algorithm ppo-shogi --actors N    (N self-play Ray actors spread over the nodes)

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
                        require_minimums, resolve_storage, start_ray)
from trainers.checkpoint import CheckpointError, load_checkpoint
from trainers.registry import ALGORITHMS, get_algorithm


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="algorithms: " + ", ".join(ALGORITHMS))
    parser.add_argument("--algorithm", required=True, help="one of: " + ", ".join(ALGORITHMS))
    parser.add_argument("--config", help="YAML file of config keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable); the value is read as YAML")
    parser.add_argument("--workers", type=int, default=1, help="TorchTrainer workers (DDP when > 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--actors", type=int, help="ppo-shogi: self-play Ray actors, spread over the cluster's nodes "
                                                   "(sets collector=ray and actors=N; CPUs each: actor_cpus)")
    parser.add_argument("--storage", default=os.environ.get("TRAINYARD_STORAGE", "results"),
                        help="where runs, checkpoints and logs go (default: $TRAINYARD_STORAGE or ./results)")
    parser.add_argument("--name", help="run name (default: ALGORITHM_TIMESTAMP)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest run of this algorithm in --storage (or --name)")
    parser.add_argument("--from-checkpoint", metavar="PATH",
                        help="start from a checkpoint folder or state.pt of the same algorithm")
    parser.add_argument("--address", help="Ray cluster to join ('auto' on a cluster node); default RAY_ADDRESS or a local Ray")
    parser.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the last checkpoint")
    parser.add_argument("--keep-checkpoints", type=int, default=2, help="best K checkpoints kept (the latest always)")
    parser.add_argument("--wandb", action="store_true", help="log to W&B (offline unless WANDB_API_KEY is set)")
    args = parser.parse_args(argv)
    require_minimums(parser, [("--workers", args.workers, 1), ("--max-failures", args.max_failures, 0),
                              ("--keep-checkpoints", args.keep_checkpoints, 1),
                              ("--gpus-per-worker", args.gpus_per_worker, 0)])
    return args


def latest_run_name(storage: Path, algorithm: str) -> str | None:
    runs = [p for p in storage.glob(f"{algorithm}_*") if (p / "checkpoint_manager_snapshot.json").exists()]
    return max(runs, key=lambda p: p.stat().st_mtime).name if runs else None


def choose_run_name(args: argparse.Namespace, storage: Path) -> str:
    if args.name:
        return args.name
    if args.resume:
        name = latest_run_name(storage, args.algorithm)
        if name is None:
            raise ValueError(f"--resume: no earlier run of {args.algorithm} with a checkpoint in {storage}")
        return name
    return f"{args.algorithm}_{datetime.now():%Y%m%d-%H%M%S}"


def print_summary(result, run_dir: Path, seconds: float, metric: str) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = result.metrics or {}
    table = Table(title=f"{run_dir.name}: finished in {seconds:.1f} s", show_header=True)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, float):
            table.add_row(key + ("  <- metric" if key == metric else ""), f"{value:.5g}")
    table.add_row("best iteration", str(int(metrics.get("best_iteration", 0))))
    table.add_row("wall time (s)", f"{seconds:.1f}")
    table.add_row("checkpoint (latest)", result.checkpoint.path if result.checkpoint else "none")
    best = getattr(result, "best_checkpoints", None) or []
    if best:
        table.add_row("best checkpoints", ", ".join(Path(c.path).name for c, _ in best))
    table.add_row("TensorBoard", f"tensorboard --logdir {run_dir / 'tensorboard'}")
    table.add_row("figures", str(run_dir / "figures"))
    Console(width=140).print(table)


def write_summary(result, run_dir: Path, seconds: float, plan, metric: str) -> None:
    """<run>/summary.json: the final metrics and what the run had, for scripts (atomic)."""
    from trainers.checkpoint import write_json_atomic

    metrics = {key: value for key, value in (result.metrics or {}).items() if isinstance(value, (int, float))}
    write_json_atomic({"metric": metric, "metrics": metrics, "wall_seconds": seconds, "workers": plan.workers,
                       "cpus_per_worker": plan.cpus_per_worker, "gpus_per_worker": plan.gpus_per_worker,
                       "checkpoint": result.checkpoint.path if result.checkpoint else None},
                      run_dir / "summary.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from distributed.resources import ResourceError, check_local_gpus, cluster_totals

    try:
        spec, config = assemble_config(args.algorithm, args.config, args.set + actor_sets(args))
        if not (args.address or _ray_address_set()):
            check_local_gpus(args.gpus_per_worker)
        initial = None
        if args.from_checkpoint:
            load_checkpoint(args.from_checkpoint, spec.name)  # checked here, at the edge
            initial = args.from_checkpoint
        storage = resolve_storage(args.storage)
        run_name = choose_run_name(args, storage)
    except config_error_types() + (ResourceError, CheckpointError, ValueError) as error:
        return fail(str(error))

    start_ray(args.address)
    try:  # what the run needs against what the cluster has, before asking Ray for it (no hang)
        cpus, gpus = cluster_totals()
        plan = plan_learners(args, config, cpus, gpus)
    except ResourceError as error:
        return fail(str(error))

    from ray.train import Checkpoint, TrainingFailedError

    from distributed.train import build_torch_trainer

    trainer = build_torch_trainer(
        spec.name, config, plan, storage, run_name, use_wandb=args.wandb,
        keep_checkpoints=args.keep_checkpoints, max_failures=args.max_failures,
        resume_from=Checkpoint.from_directory(str(_checkpoint_folder(initial))) if initial else None,
    )
    actors = (f", {config.actors} self-play actor(s) x {config.actor_cpus:g} CPU"
              if getattr(config, "collector", None) == "ray" else "")
    print(f"run {run_name}: {spec.name}, {plan.workers} worker(s) x {plan.cpus_per_worker:g} CPU"
          f"{f' + {plan.gpus_per_worker:g} GPU' if plan.gpus_per_worker else ''}{actors}, storage {storage}",
          flush=True)
    started = time.perf_counter()
    try:
        result = trainer.fit()
    except TrainingFailedError as error:
        return fail(f"training failed: {str(error).strip().splitlines()[0]}", EXIT_FAILED)
    seconds = time.perf_counter() - started
    print_summary(result, storage / run_name, seconds, config.metric)
    write_summary(result, storage / run_name, seconds, plan, config.metric)
    return EXIT_OK


def actor_sets(args: argparse.Namespace) -> list[str]:
    """`--actors N` is `--set collector=ray --set actors=N`, for algorithms that have actors."""
    if args.actors is None:
        return []
    if args.actors < 1:
        raise ValueError(f"--actors must be >= 1, got {args.actors}")
    if "actors" not in get_algorithm(args.algorithm).config_class.model_fields:
        raise ValueError(f"--actors: {args.algorithm} has no self-play actors (ppo-shogi has)")
    return ["collector=ray", f"actors={args.actors}"]


def plan_learners(args: argparse.Namespace, config, cpus: float, gpus: float):
    """Resources of the learners, beside the self-play actors when Ray actors collect."""
    from distributed.resources import largest_node_cpus, plan_with_actors, plan_workers

    if getattr(config, "collector", None) != "ray":
        return plan_workers(args.workers, args.gpus_per_worker, cpus, gpus)
    serve = config.inference == "server"
    return plan_with_actors(args.workers, args.gpus_per_worker, cpus, gpus, actors=config.actors,
                            actor_cpus=config.actor_cpus, servers=args.workers if serve else 0,
                            server_gpus=config.inference_gpus if serve and args.gpus_per_worker > 0 else 0.0,
                            largest_node=largest_node_cpus(),
                            evaluators=config.eval_actors if args.workers == 1 else 0)


def _ray_address_set() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def _checkpoint_folder(path: str) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


if __name__ == "__main__":
    sys.exit(main())
