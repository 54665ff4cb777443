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


CURVES_UP_TO = 20  # trials: up to this many, also one curve of the metric over iterations per trial
MAX_PANELS = 12    # hyperparameters drawn, the most varied first


def write_outputs(result_grid, experiment_dir: Path, metric: str, mode: str = "min") -> dict[str, Path]:
    """The table of all trials (CSV + Parquet), the best-so-far curve, the metric against each
    hyperparameter and, for a small search, the metric over iterations per trial."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    table = trial_table(result_grid)
    outputs = write_table(table, experiment_dir, metric)
    outputs.update(plot_search(table, metric, mode, experiment_dir))
    if len(table) <= CURVES_UP_TO:
        outputs["metric plot"] = plot_curves(result_grid, metric, experiment_dir / "metric_per_trial.png")
    return outputs


def trial_value(table, metric: str):
    """Each trial's value of the metric: its best over its iterations where the trainer reported
    one (`best_METRIC`, in its final report), else its last (a trial the scheduler stopped)."""
    import pandas as pd

    last = pd.to_numeric(table[metric], errors="coerce") if metric in table else pd.Series(float("nan"), table.index)
    if f"best_{metric}" in table:
        return pd.to_numeric(table[f"best_{metric}"], errors="coerce").fillna(last)
    return last


def end_order(table):
    """Row labels in the order the trials ended (their last result's time), ties by trial id."""
    keys = [key for key in ("timestamp", "trial_id") if key in table]
    return table.sort_values(keys, kind="stable").index if keys else table.index


def best_so_far(table, metric: str, mode: str):
    """The best value of the metric over the trials ended so far, one entry per trial in the
    order they ended (a trial without a value carries the best before it)."""
    values = trial_value(table, metric).loc[end_order(table)].reset_index(drop=True)
    best = values.cummin() if mode == "min" else values.cummax()
    return best.ffill()


def write_table(table, experiment_dir: Path, metric: str) -> dict[str, Path]:
    """trials.csv and trials.parquet, one row per trial, the columns a reader looks for first:
    trial, status, the metric, the config; Tune's bookkeeping after; error and path last."""
    first = [c for c in ("trial_id", "status", metric, f"best_{metric}") if c in table]
    config = sorted(c for c in table if c.startswith("config/"))
    last = [c for c in ("error", "path") if c in table]
    rest = [c for c in table if c not in first + config + last]
    table = table[first + config + rest + last]
    if "trial_id" in table:
        table = table.sort_values("trial_id", kind="stable")
    csv_path, parquet_path = experiment_dir / "trials.csv", experiment_dir / "trials.parquet"
    table.to_csv(csv_path, index=False)
    # a column of mixed objects (a list-valued config key, NaN beside text) as text: Parquet
    # needs one type per column
    table.astype({c: str for c in table.columns if table[c].dtype == object}).to_parquet(parquet_path, index=False)
    return {"trials (CSV)": csv_path, "trials (Parquet)": parquet_path}


def varied_keys(table) -> list[str]:
    """The config keys that take more than one value across the trials, most values first."""
    keys = [c for c in table if c.startswith("config/") and table[c].astype(str).nunique() > 1]
    return sorted(keys, key=lambda c: (-table[c].astype(str).nunique(), c))


def plot_search(table, metric: str, mode: str, experiment_dir: Path) -> dict[str, Path]:
    """best_so_far.png: every trial's value in the order the trials ended, under the best so far;
    hyperparameters.png: the metric against each varied config key (log axis for a positive
    range over more than a decade, categories side by side), the best trial marked. Both stay
    legible at thousands of trials (points, no legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = trial_value(table, metric)
    ordered = values.loc[end_order(table)].to_numpy()
    figure, axis = plt.subplots(figsize=(7, 4))
    ended = np.arange(1, len(ordered) + 1)
    axis.scatter(ended, ordered, s=6, alpha=0.4, color="tab:blue", label="trial", linewidths=0)
    axis.plot(ended, best_so_far(table, metric, mode).to_numpy(), color="tab:red", label="best so far")
    axis.set_xlabel("trials ended")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} ({mode}) over {len(table)} trials", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    # fixed margins: tight_layout measures every tick label first (about a second per search here)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.92)
    curve_path = experiment_dir / "best_so_far.png"
    figure.savefig(curve_path, dpi=110)
    plt.close(figure)

    keys = varied_keys(table)[:MAX_PANELS]
    columns = min(3, len(keys)) or 1
    rows = max(1, (len(keys) + columns - 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.0 * rows), squeeze=False)
    best = (values.idxmin() if mode == "min" else values.idxmax()) if values.notna().any() else None
    jitter = np.random.default_rng(20_261).uniform(-0.2, 0.2, len(table))
    for axis, key in zip(axes.flat, keys):
        column = table[key]
        numeric = _as_numbers(column)
        if numeric is not None and numeric.nunique() > 4:
            x = numeric.to_numpy(dtype=float)
            if _log_spread(x):
                axis.set_xscale("log")
        else:  # a choice: one column of points per value, spread a little
            labels = sorted(column.astype(str).unique(), key=_natural)
            position = {label: i for i, label in enumerate(labels)}
            x = column.astype(str).map(position).to_numpy(dtype=float) + jitter
            axis.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30 if len(labels) > 4 else 0)
        axis.scatter(x, values, s=6, alpha=0.4, linewidths=0)
        if best is not None:
            axis.scatter([x[table.index.get_loc(best)]], [values[best]], marker="*", s=80, color="tab:red")
        axis.set_title(key.removeprefix("config/"), fontsize=9)
        axis.set_ylabel(metric, fontsize=8)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        axis.set_visible(False)
    width, height = 4.0 * columns, 3.0 * rows  # inches: the margins below in inches over them
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.65 / height,
                           top=1 - 0.3 / height, wspace=0.35, hspace=0.6)
    scatter_path = experiment_dir / "hyperparameters.png"
    figure.savefig(scatter_path, dpi=110)
    plt.close(figure)
    return {"best-so-far plot": curve_path, "hyperparameter plot": scatter_path}


def _as_numbers(column):
    """The column as numbers when every value given is one (booleans are categories), else None."""
    import pandas as pd

    if column.dtype == bool or (column.dtype == object and column.map(lambda v: isinstance(v, bool)).any()):
        return None
    numbers = pd.to_numeric(column, errors="coerce")
    return None if (numbers.isna() & column.notna()).any() else numbers


def _log_spread(x) -> bool:
    """Positive values over more than a decade whose median sits nearer their geometric mean
    than their mean (drawn log-uniformly, as learning rates are): a log axis."""
    import numpy as np

    x = x[np.isfinite(x)]
    if len(x) == 0 or x.min() <= 0 or x.max() <= 10 * x.min():
        return False
    log_median = np.log(np.median(x))
    return abs(log_median - np.log(x).mean()) < abs(log_median - np.log(x.mean()))


def _natural(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def plot_curves(result_grid, metric: str, path: Path) -> Path:
    """The metric over iterations, one line per trial (read from each trial's history)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


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
