"""What a finished (or interrupted) Tune search left: its ResultGrid as a table, a plot, counts
and the best trial. Reads result objects only; imports no Ray itself."""
from __future__ import annotations

from pathlib import Path


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


def error_reason(error: BaseException) -> str:
    """The innermost message of a trial's error (Ray wraps the trainable's exception)."""
    cause = getattr(error, "cause", None) or error.__cause__ or error
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:300]


def trial_table(result_grid):
    """One row per trial, errored ones too (ResultGrid.get_dataframe can drop them): its last
    metrics, its config as config/KEY, and how it ended: TERMINATED, or ERROR with the reason
    (e.g. "DivergedError: ... diverged at iteration 6: loss is inf")."""
    import pandas as pd

    rows = []
    for result in result_grid:
        row = {key: value for key, value in (result.metrics or {}).items() if key != "config"}
        row.update({f"config/{key}": value for key, value in (result.config or {}).items()})
        row["status"] = trial_status(result)
        row["error"] = error_reason(result.error) if result.error else ""
        row["path"] = result.path
        rows.append(row)
    return pd.DataFrame(rows)


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


def copy_best_reconstruction(best, experiment_dir: Path) -> dict[str, Path]:
    """The best trial's `reconstruction/` folder (written by algorithms that produce one),
    copied next to trials.csv: an inline trial writes it in its trial folder, a train trial in
    its run under train_runs/."""
    import shutil

    trial_id = (best.metrics or {}).get("trial_id", "")
    for source in (Path(best.path) / "reconstruction",
                   experiment_dir / "train_runs" / f"train-trial_id={trial_id}" / "reconstruction"):
        if source.is_dir():
            target = experiment_dir / "best_reconstruction"
            shutil.copytree(source, target, dirs_exist_ok=True)
            return {"best reconstruction": target}
    return {}


def best_result(grid, metric: str, mode: str):
    """The best trial over all its iterations, or None when no trial reported the metric."""
    try:
        return grid.get_best_result(metric=metric, mode=mode, scope="all")
    except RuntimeError:
        return None


def grid_combinations(space: dict) -> int:
    combinations = 1
    for domain in space.values():
        if isinstance(domain, dict) and "grid_search" in domain:
            combinations *= len(domain["grid_search"])
    return combinations
