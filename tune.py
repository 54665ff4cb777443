"""A Ray Tune search over one algorithm's space (search_spaces/NAME.py).

    python tune.py --algorithm gat-advanced [--num-samples N] [--scheduler asha|pbt|fifo]
        [--search random|optuna] [--max-concurrent N] [--workers-per-trial N] [--resume]
        [--grid KEY=[V1,V2,...] ...]

Prints the best configuration and its metrics; writes the table of all trials (CSV and
Parquet) and a plot of the metric over iterations per trial next to the experiment.
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
                        require_minimums, resolve_storage, start_ray)

EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
from trainers.registry import ALGORITHMS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="algorithms: " + ", ".join(ALGORITHMS))
    parser.add_argument("--algorithm", required=True, help="one of: " + ", ".join(ALGORITHMS))
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
                             "trial of that algorithm needs, e.g. 0.25 for mopie: 4 trials per GPU)")
    parser.add_argument("--trial-mode", choices=("auto", "inline", "train"), default="auto",
                        help="inline: run 1-worker trials in the trial process; train: a TorchTrainer per trial")
    parser.add_argument("--storage", default=os.path.join(os.environ.get("TRAINYARD_STORAGE", "results"), "tune"))
    parser.add_argument("--name", help="experiment name (default: ALGORITHM_TIMESTAMP)")
    parser.add_argument("--resume", action="store_true", help="finish the latest search of this algorithm")
    parser.add_argument("--address", help="Ray cluster to join; default RAY_ADDRESS or a local Ray")
    parser.add_argument("--wandb", action="store_true", help="log every trial to W&B (offline unless WANDB_API_KEY)")
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


def write_outputs(result_grid, experiment_dir: Path, metric: str) -> dict[str, Path]:
    """The table of all trials (CSV + Parquet) and the metric over iterations per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experiment_dir.mkdir(parents=True, exist_ok=True)
    table = trial_table(result_grid)
    csv_path, parquet_path = experiment_dir / "trials.csv", experiment_dir / "trials.parquet"
    table.to_csv(csv_path, index=False)
    table.astype({c: str for c in table.columns if table[c].dtype == object}).to_parquet(parquet_path, index=False)
    figure, axis = plt.subplots(figsize=(7, 4))
    for result in result_grid:
        history = result.metrics_dataframe
        if history is not None and metric in history:
            axis.plot(history["training_iteration"], history[metric], marker=".",
                      label=str(result.metrics.get("trial_id", "")) if result.metrics else "")
    axis.set_xlabel("iteration")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    if len(result_grid) <= 12:
        axis.legend(fontsize=7)
    figure.tight_layout()
    plot_path = experiment_dir / "metric_per_trial.png"
    figure.savefig(plot_path, dpi=110)
    plt.close(figure)
    return {"trials (CSV)": csv_path, "trials (Parquet)": parquet_path, "metric plot": plot_path}


def trial_table(result_grid):
    """One row per trial, errored ones too (ResultGrid.get_dataframe can drop them): its last
    metrics, its config as config/KEY, and how it ended: TERMINATED, or ERROR with the reason
    (e.g. "DivergedError: mopie diverged at iteration 6: loss is inf")."""
    import pandas as pd

    rows = []
    for result in result_grid:
        row = {key: value for key, value in (result.metrics or {}).items() if key != "config"}
        row.update({f"config/{key}": value for key, value in (result.config or {}).items()})
        row["status"] = trial_status(result)
        row["error"] = _reason(result.error) if result.error else ""
        row["path"] = result.path
        rows.append(row)
    return pd.DataFrame(rows)


def grid_axes(args: argparse.Namespace) -> dict:
    """--grid KEY=[V1,V2] as grid axes of the space (check_space_choices then validates every
    value against the fixed config, so that a typo fails here with exit 2, not in every trial)."""
    import yaml
    from ray import tune

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
        axes[key] = tune.grid_search(values)
    return axes


def check_space_choices(config_class, config, space: dict) -> None:
    """Each listed value of the space (a choice or a grid axis), and a few draws of each range,
    put into the fixed config must validate: a clash (schedule_kwargs of one schedule while the
    space tries another; mopie's `alpha`, an alias of the `lr` the space varies) fails here
    naming the key (exit 2), not in every trial after Ray has started."""
    from trainers.config import ConfigError, build_config

    base = config.model_dump()
    for key, domain in space.items():
        if isinstance(domain, dict):
            listed = domain.get("grid_search", [])
        elif hasattr(domain, "categories"):
            listed = domain.categories
        else:  # a range: seeded draws, so that the check is the same every time
            listed = [domain.sample(random_state=seed) for seed in range(3)] if hasattr(domain, "sample") else []
        for value in listed:
            try:
                build_config(config_class, {**base, key: value})
            except ConfigError as error:
                raise ConfigError(f"the search space's {key} = {value!r} does not fit the fixed config: "
                                  f"{error}") from None


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
    for key in sorted(best.metrics):
        value = best.metrics[key]
        if isinstance(value, float) and not key.startswith(("time_", "timestamp")):
            table.add_row(key + ("  <- metric" if key == metric else ""), f"{value:.5g}")
    for label, path in outputs.items():
        table.add_row(label, str(path))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from distributed.resources import ResourceError, check_local_gpus, cluster_totals
    from search_spaces import load_search_space

    try:
        spec, config = assemble_config(args.algorithm, args.config, args.set)
        space_module = load_search_space(spec.name)
        space = {**space_module.space(), **grid_axes(args)}
        check_space_choices(spec.config_class, config, space)
        if "max_iterations" not in config.model_fields_set and hasattr(space_module, "MAX_ITERATIONS"):
            config = config.model_copy(update={"max_iterations": space_module.MAX_ITERATIONS})
        if not args.address and args.gpus_per_worker != "auto":
            check_local_gpus(args.gpus_per_worker)
        storage = resolve_storage(args.storage)
        name = args.name or f"{spec.name}_{datetime.now():%Y%m%d-%H%M%S}"
        if args.resume and not args.name:
            previous = latest_experiment(storage, spec.name)
            if previous is None:
                raise ValueError(f"--resume: no earlier search of {spec.name} in {storage}")
            name = previous.name
    except config_error_types() + (ResourceError, ValueError) as error:
        return fail(str(error))

    if args.wandb:  # the trials inherit these (a local Ray starts from this environment)
        from trainers.run_logger import wandb_mode

        os.environ["WANDB_MODE"] = wandb_mode()
        os.environ.setdefault("WANDB_RUN_GROUP", name)  # one W&B group per search
    start_ray(args.address)
    from distributed.tune import build_trainable, build_tuner, make_scheduler, make_search, plan_trials

    try:
        cpus, gpus = cluster_totals()
        gpus_per_worker = resolve_gpu_share(args.gpus_per_worker, gpus, space_module)
        plan = plan_trials(args.workers_per_trial, gpus_per_worker, cpus, gpus, args.max_concurrent,
                           args.trial_mode, actor_cpus=self_play_actor_cpus(config, args.workers_per_trial))
        if args.scheduler == "pbt" and plan.mode != "inline":
            raise ResourceError("--scheduler pbt needs inline trials (one worker per trial)")
    except (ResourceError, ValueError) as error:
        return fail(str(error))

    experiment_dir = storage / name
    trainable = build_trainable(plan, spec.name, config.model_dump(), spec.config_class, experiment_dir,
                                args.wandb)
    print(f"search {name}: {args.num_samples} trial(s) of {spec.name}, {plan.mode} trials, "
          f"{plan.concurrency} at a time, {plan.trial_resources} per trial"
          + (f" + {plan.workers.workers} worker(s) x {plan.workers.cpus_per_worker:g} CPU" if plan.workers else ""),
          flush=True)
    started = time.perf_counter()
    import ray.tune as tune

    if args.resume and tune.Tuner.can_restore(str(experiment_dir)):
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, param_space=space,
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = build_tuner(trainable, space, metric=config.metric, mode=config.mode,
                            scheduler=make_scheduler(args.scheduler, config.max_iterations, space),
                            search=make_search(args.search, config.metric, config.mode),
                            num_samples=args.num_samples, concurrency=plan.concurrency,
                            storage=storage, name=name, use_wandb=args.wandb,
                            # with W&B, a fresh process per trial: a trial that re-initialised W&B
                            # in a reused process lost its W&B service connection once in 4 CI runs
                            reuse_actors=plan.mode == "inline" and not args.wandb)
    grid = tuner.fit()
    seconds = time.perf_counter() - started
    # a resumed search keeps the trial count it started with, whatever --num-samples says now
    counts = trial_counts(grid, expected=0 if args.resume else args.num_samples * grid_combinations(space))
    outputs = write_outputs(grid, experiment_dir, config.metric)
    try:
        best = grid.get_best_result(metric=config.metric, mode=config.mode, scope="all")
    except RuntimeError:
        best = None
    if best is not None:
        print_best(best, config.metric, outputs, seconds, counts)
    if counts.get("UNFINISHED"):  # Ctrl-C: Tune saved its state and returned early
        return fail(f"search interrupted with {counts['UNFINISHED']} trial(s) unfinished; finish it with: "
                    f"python tune.py --algorithm {spec.name} --name {name} --resume (and the same options)",
                    EXIT_INTERRUPTED)
    if best is None:
        return fail(f"no trial reported {config.metric!r}; see {experiment_dir}", EXIT_FAILED)
    return EXIT_OK


def _reason(error: BaseException) -> str:
    """The innermost message of a trial's error (Ray wraps the trainable's exception)."""
    cause = getattr(error, "cause", None) or error.__cause__ or error
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:300]


def self_play_actor_cpus(config, workers: int) -> float:
    """CPUs a trial's self-play actors hold beside it (ppo-shogi with collector=ray; else 0):
    the actors, and one inference actor per learner with inference=server (as run.py plans)."""
    if getattr(config, "collector", None) != "ray":
        return 0.0
    servers = workers if config.inference == "server" else 0
    evaluators = getattr(config, "eval_actors", 0) if workers == 1 else 0   # evaluation actors (one learner)
    return (config.actors + servers + evaluators) * config.actor_cpus


def trial_status(result) -> str:
    """TERMINATED (finished or stopped by the scheduler: Tune marks its last result done), ERROR,
    or UNFINISHED (still running when the search was interrupted)."""
    if result.error:
        return "ERROR"
    return "TERMINATED" if (result.metrics or {}).get("done") else "UNFINISHED"


def trial_counts(grid, expected: int = 0) -> dict[str, int]:
    """Trials by how they ended; trials that an interrupted search never started count as
    UNFINISHED (`expected`: num_samples x the grid's combinations)."""
    counts = {"TERMINATED": 0, "ERROR": 0}
    for result in grid:
        status = trial_status(result)
        counts[status] = counts.get(status, 0) + 1
    never_started = expected - len(grid)
    if never_started > 0:
        counts["UNFINISHED"] = counts.get("UNFINISHED", 0) + never_started
    return counts


def grid_combinations(space: dict) -> int:
    combinations = 1
    for domain in space.values():
        if isinstance(domain, dict) and "grid_search" in domain:
            combinations *= len(domain["grid_search"])
    return combinations


if __name__ == "__main__":
    sys.exit(main())
