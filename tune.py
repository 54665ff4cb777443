"""A Ray Tune search over one algorithm's space (search_spaces/NAME.py).

    python tune.py --algorithm ALGORITHM [--num-samples N] [--scheduler asha|pbt|fifo]
        [--search random|optuna] [--max-concurrent N] [--workers-per-trial N] [--resume]
        [--grid KEY=[V1,V2,...] ...] [--mlflow] [--verbose]

Prints the best configuration and its metrics; writes the table of all trials (CSV and
Parquet), the best value so far over the trials, the metric against each hyperparameter and
(for up to 20 trials) the metric over iterations per trial next to the experiment.
Exit codes: 0 done, 1 every trial failed, 2 bad input, 130 interrupted (finish it with --resume).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from cli_common import (EXIT_FAILED, EXIT_OK, assemble_config, config_error_types, fail,
                        require_minimums, resolve_storage, start_ray, summary_order)

from distributed.results import CURVES_UP_TO, grid_combinations, trial_counts
from search_spaces import check_space_choices, load_search_space
from trainers.registry import algorithm_names, run_name_prefix

EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
MAX_TRIALS = 100_000    # a search larger than this is a typo in --grid or --num-samples, not a plan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="algorithms: " + ", ".join(algorithm_names()))
    parser.add_argument("--algorithm", required=True,
                        help="a registered name (" + ", ".join(algorithm_names()) + ") or package.module:Class")
    parser.add_argument("--config", help="YAML file of fixed config keys (the space overrides them)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fix one config key")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=[V1,V2]",
                        help="try every listed value of KEY (replaces KEY in the space; repeatable; "
                             "trials = num-samples x the grid's combinations)")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--scheduler", choices=("asha", "pbt", "fifo"), default="asha")
    parser.add_argument("--search", choices=("random", "optuna"), default="random")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what fits)")
    parser.add_argument("--workers-per-trial", type=int, default=1)
    parser.add_argument("--gpus-per-worker", type=gpu_share, default="auto",
                        help="GPU share per worker; fractions pack several trials on one GPU. auto (the "
                             "default): none without GPUs, else the search space's GPU_SHARE (what one "
                             "trial of that algorithm needs, e.g. 0.25: 4 trials per GPU)")
    parser.add_argument("--trial-mode", choices=("auto", "inline", "train"), default="auto",
                        help="inline: run 1-worker trials in the trial process; train: a TorchTrainer per trial")
    parser.add_argument("--storage", default=os.path.join(os.environ.get("TRAINYARD_STORAGE", "results"), "tune"))
    parser.add_argument("--name", help="experiment name (default: ALGORITHM_TIMESTAMP)")
    parser.add_argument("--resume", action="store_true", help="finish the latest search of this algorithm")
    parser.add_argument("--address", help="Ray cluster to join; default RAY_ADDRESS or a local Ray")
    parser.add_argument("--wandb", action="store_true", help="log every trial to W&B (offline unless WANDB_API_KEY)")
    parser.add_argument("--mlflow", action="store_true",
                        help="log every trial to MLflow ($MLFLOW_TRACKING_URI, else ./mlruns), one experiment per search")
    parser.add_argument("--verbose", action="store_true",
                        help="Ray Tune's trial tables and Ray's output, instead of one progress line")
    parser.add_argument("--trial-figures", choices=("auto", "on", "off"), default="auto",
                        help=f"each trial's own figures (learning curves, reconstructions): auto draws them in "
                             f"searches of up to {CURVES_UP_TO} trials, or as --set figures=... says; the trials' "
                             f"data outputs and the search's own figures are written either way")
    args = parser.parse_args(argv)
    require_minimums(parser, [("--num-samples", args.num_samples, 1),
                              ("--workers-per-trial", args.workers_per_trial, 1),
                              ("--max-concurrent", args.max_concurrent or 1, 1),
                              ("--gpus-per-worker", 0 if args.gpus_per_worker == "auto" else args.gpus_per_worker, 0)])
    return args


def gpu_share(text: str) -> float | str:
    """--gpus-per-worker: 'auto' or a number (its minimum is checked with the other flags)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def resolve_gpu_share(requested: float | str, gpus: float, space_module) -> float:
    """auto: no GPUs where the cluster has none, else the algorithm's GPU_SHARE (default 1)."""
    if requested != "auto":
        return float(requested)
    return float(getattr(space_module, "GPU_SHARE", 1.0)) if gpus > 0 else 0.0


def latest_experiment(storage: Path, algorithm: str) -> Path | None:
    runs = [p for p in storage.glob(f"{algorithm}_*") if (p / "tuner.pkl").exists()]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def grid_axes(args: argparse.Namespace) -> dict:
    """--grid KEY=[V1,V2] as grid axes of the space (check_space_choices then validates every
    value against the fixed config, so that a typo fails here with exit 2, not in every trial)."""
    import yaml

    if args.grid and args.search == "optuna":
        raise ValueError("--grid needs --search random (Optuna does not take grid axes)")
    axes = {}
    for item in args.grid:
        key, sep, text = item.partition("=")
        try:
            values = yaml.safe_load(text) if sep else None
        except yaml.YAMLError:
            values = None
        if not key or not isinstance(values, list) or not values:
            raise ValueError(f"--grid {item!r}: expected KEY=[V1, V2, ...] with at least one value")
        axes[key] = {"grid_search": values}  # what ray.tune.grid_search(values) returns
    return axes


def print_best(best, metric: str, outputs: dict[str, Path], seconds: float, counts: dict[str, int]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    table = Table(title=f"best trial by {metric} ({seconds:.0f} s, "
                        + ", ".join(f"{n} {state.lower()}" for state, n in counts.items()) + ")")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in sorted(best.config.items()):
        table.add_row(f"config.{key}", f"{value:.4g}" if isinstance(value, float) else str(value))
    for key in summary_order(best.metrics):
        value = best.metrics[key]
        if isinstance(value, float) and not key.startswith(("time_", "timestamp")):
            table.add_row(key + ("  <- metric" if key == metric else ""), f"{value:.5g}")
    for label, path in outputs.items():
        table.add_row(label, str(path))
    console.print(table)


def trial_figures(choice: str, config, trials: int) -> bool:
    """Whether each trial draws its figures. Drawing them takes seconds per trial (matplotlib),
    most of a small trial's time: a large search draws only its own figures from the trials
    table, unless asked."""
    if choice != "auto":
        return choice == "on"
    if "figures" in config.model_fields_set:
        return config.figures
    return trials <= CURVES_UP_TO


def search_space(space_module, config, args: argparse.Namespace) -> dict:
    """The algorithm's space without the keys the user fixed (--set, --config: the same in every
    trial), with the --grid axes."""
    fixed = config.model_fields_set
    return {**{key: domain for key, domain in space_module.space().items() if key not in fixed}, **grid_axes(args)}


def check_trial_count(trials: int) -> None:
    if trials > MAX_TRIALS:
        raise ValueError(f"the search would run {trials:,} trials (--num-samples x the --grid combinations); "
                         f"the limit is {MAX_TRIALS:,}")


def finish_mlflow_runs(mlflow: dict[str, str], grid) -> None:
    """Each trial's MLflow run gets its final checkpoint's path and its end state."""
    from distributed.results import trial_status
    from trainers import mlflow_tracking

    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id:
            status = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(trial_status(result), "KILLED")
            mlflow_tracking.finish_run(mlflow, trial_id, result.checkpoint.path if result.checkpoint else None,
                                       status)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from distributed.resources import ResourceError, check_local_gpus, cluster_totals, ray_parts_of

    try:
        spec, config = assemble_config(args.algorithm, args.config, args.set)
        spec.trainer_class()  # a trainer that cannot be imported is bad input, said before Ray starts
        space_module = load_search_space(spec)
        space = search_space(space_module, config, args)
        check_trial_count(args.num_samples * grid_combinations(space))
        check_space_choices(spec.config_class, config, space)
        config = config.model_copy(update={"figures": trial_figures(args.trial_figures, config,
                                                                    args.num_samples * grid_combinations(space))})
        if "max_iterations" not in config.model_fields_set and hasattr(space_module, "MAX_ITERATIONS"):
            config = config.model_copy(update={"max_iterations": space_module.MAX_ITERATIONS})
        if not args.address and args.gpus_per_worker != "auto":
            check_local_gpus(args.gpus_per_worker)
        storage = resolve_storage(args.storage)
        prefix = run_name_prefix(spec)
        name = args.name or f"{prefix}_{datetime.now():%Y%m%d-%H%M%S}"
        if args.resume and not args.name:
            previous = latest_experiment(storage, prefix)
            if previous is None:
                raise ValueError(f"--resume: no earlier search of {spec.name} in {storage}")
            name = previous.name
    except config_error_types() + (ResourceError, ValueError) as error:
        return fail(str(error))

    if args.wandb:  # the trials inherit these (a local Ray starts from this environment)
        from trainers.run_logger import wandb_mode

        os.environ["WANDB_MODE"] = wandb_mode()
        os.environ.setdefault("WANDB_RUN_GROUP", name)  # one W&B group per search
    mlflow = None
    if args.mlflow:
        from trainers import mlflow_tracking

        mlflow = mlflow_tracking.tracking(name)  # one MLflow experiment per search
    if not args.verbose:  # Tune's own reporter silent: the progress line says it (verbose=0 alone
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # leaves the new reporter's header tables)
    # no TensorBoard logger in the driver: every trial writes its own scalars (build_tuner names
    # the CSV and JSON loggers itself)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    start_ray(args.address, args.verbose)
    from distributed.tune import (PBT_INTERVAL, build_trainable, build_tuner, make_scheduler, make_search,
                                  plan_trials, put_shared_data, restore_or_build, search_callbacks)

    try:
        cpus, gpus = cluster_totals()
        gpus_per_worker = resolve_gpu_share(args.gpus_per_worker, gpus, space_module)
        parts = ray_parts_of(spec, config, args.workers_per_trial, gpus_per_worker)
        plan = plan_trials(args.workers_per_trial, gpus_per_worker, cpus, gpus, args.max_concurrent,
                           args.trial_mode, actor_cpus=parts.cpus if parts else 0.0,
                           actor_label=parts.label if parts else "actor")
        if args.scheduler == "pbt" and plan.mode != "inline":
            raise ResourceError("--scheduler pbt needs inline trials (one worker per trial)")
        if args.scheduler == "pbt" and "checkpoint_every" not in config.model_fields_set:
            # an exploiting trial starts from the better trial's latest checkpoint: a fresh one
            config = config.model_copy(update={"checkpoint_every": PBT_INTERVAL})
        if "checkpoint_at_best" not in config.model_fields_set:
            # a trial's final checkpoint holds its selected state, and a search ranks trials, not
            # a trial's checkpoints: the checkpoints at each new best would only cost time and disk
            config = config.model_copy(update={"checkpoint_at_best": False})
        # a data set that cannot be built (too large for its prior, say) is bad input, said once
        shared_data, shared_note = put_shared_data(spec, config, space)
    except (ResourceError, ValueError) as error:
        return fail(str(error))

    experiment_dir = storage / name
    trainable = build_trainable(plan, spec, config.model_dump(), experiment_dir, args.wandb, mlflow, shared_data)
    total = args.num_samples * grid_combinations(space)
    print(f"search {name}: {total} trial(s) of {spec.name}, {plan.mode} trials, "
          f"{plan.concurrency} at a time, {plan.trial_resources} per trial"
          + (f" + {plan.workers.workers} worker(s) x {plan.workers.cpus_per_worker:g} CPU" if plan.workers else "")
          + (f"; {shared_note}" if shared_note else ""),
          flush=True)
    started = time.perf_counter()
    restoring = args.resume and experiment_dir.is_dir()
    tuner = restore_or_build(experiment_dir, args.resume, trainable, space, lambda: build_tuner(
        trainable, space, metric=config.metric, mode=config.mode,
        scheduler=make_scheduler(args.scheduler, config.max_iterations, space),
        search=make_search(args.search, config.metric, config.mode),
        num_samples=args.num_samples, concurrency=plan.concurrency, storage=storage, name=name,
        trial_prefix=prefix, verbose=args.verbose,
        # with W&B, a fresh process per trial: a trial that re-initialised W&B in a reused
        # process lost its W&B service connection once in 4 CI runs
        reuse_actors=plan.mode == "inline" and not args.wandb))
    if restoring:
        print(f"search {name} restored from {experiment_dir} in {time.perf_counter() - started:.1f} s; its finished "
              f"trials are kept, the others run again from their checkpoints", flush=True)
    progress = None if args.verbose else {"name": name, "total": total, "metric": config.metric, "mode": config.mode}
    with search_callbacks(progress):
        grid = tuner.fit()
    seconds = time.perf_counter() - started
    from distributed.results import best_result, copy_best_reconstruction, write_outputs

    # a resumed search keeps the trial count it started with, whatever --num-samples says now
    counts = trial_counts(grid, expected=0 if args.resume else total)
    outputs = write_outputs(grid, experiment_dir, config.metric, config.mode)
    if mlflow:
        finish_mlflow_runs(mlflow, grid)
    best = best_result(grid, config.metric, config.mode)
    if best is not None:
        outputs.update(copy_best_reconstruction(best, experiment_dir))
        print_best(best, config.metric, outputs, seconds, counts)
    if counts.get("UNFINISHED"):  # Ctrl-C: Tune saved its state and returned early
        return fail(f"search interrupted with {counts['UNFINISHED']} trial(s) unfinished; finish it with: "
                    f"python tune.py --algorithm {args.algorithm} --name {name} --resume (and the same options)",
                    EXIT_INTERRUPTED)
    if best is None:
        return fail(f"no trial reported {config.metric!r}; see {experiment_dir}", EXIT_FAILED)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
