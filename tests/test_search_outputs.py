"""What a large search leaves readable, on a synthetic 1,000-trial results table (the table
trial_table builds from a ResultGrid): trials.parquet, the best-so-far curve and the metric
against each hyperparameter. No Ray: the functions read the table only."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from distributed.results import _log_spread, best_so_far, plot_search, varied_keys, write_table

N = 1000


def synthetic_table(seed: int = 0) -> pd.DataFrame:
    """1,000 trials as Tune leaves them: ended out of id order, 30 errored (no metric), a
    log-uniform lr, two choices, a uniform; the metric is best near lr = 1e-2."""
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-4, -1, N)
    table = pd.DataFrame({
        "trial_id": [f"abc_{i:05d}" for i in range(N)],
        "timestamp": rng.permutation(N) + 1_700_000_000,
        "config/lr": lr,
        "config/schedule": rng.choice(["none", "cosine", "plateau"], N),
        "config/batch_size": rng.choice([16, 32, 64], N),
        "config/dropout": rng.uniform(0, 0.3, N),
        "config/fixed": 5,
        "status": "TERMINATED", "error": "", "path": "/tmp/x",
    })
    table["val_loss"] = (np.log10(lr) + 2) ** 2 + rng.uniform(0, 0.5, N)
    table["best_val_loss"] = table["val_loss"] - 0.01
    errored = rng.choice(N, 30, replace=False)
    table.loc[errored, ["val_loss", "best_val_loss"]] = np.nan
    table.loc[errored, "status"] = "ERROR"
    return table


def test_a_thousand_trials_make_a_table_and_two_legible_figures(tmp_path):
    table = synthetic_table()
    paths = {**write_table(table, tmp_path, "val_loss"), **plot_search(table, "val_loss", "min", tmp_path)}
    back = pd.read_parquet(paths["trials (Parquet)"])
    assert len(back) == N and list(back.columns[:4]) == ["trial_id", "status", "val_loss", "best_val_loss"]
    assert back["trial_id"].is_monotonic_increasing and back["val_loss"].dtype == float
    assert back["val_loss"].isna().sum() == 30 and (back["status"] == "ERROR").sum() == 30

    # the curve: the trials' best values in the order they ended, never worse than before
    curve = best_so_far(table, "val_loss", "min")
    ended = table.sort_values("timestamp")["best_val_loss"].reset_index(drop=True)
    assert len(curve) == N and curve.is_monotonic_decreasing
    assert curve.iloc[-1] == table["best_val_loss"].min()
    first = ended.first_valid_index()
    assert curve.iloc[first] == ended.iloc[first] and curve.iloc[first:].notna().all()
    assert curve.iloc[99] == ended.iloc[:100].min()  # the order is by end time, not by trial id
    assert best_so_far(table, "val_loss", "max").iloc[-1] == table["best_val_loss"].max()

    # one panel per hyperparameter that varies, the fixed one left out; figures of a fixed size
    assert set(varied_keys(table)) == {"config/lr", "config/schedule", "config/batch_size", "config/dropout"}
    # a log axis for the log-uniform lr, not for the uniform dropout that also spans decades
    assert _log_spread(table["config/lr"].to_numpy()) and not _log_spread(table["config/dropout"].to_numpy())
    for name in ("best-so-far plot", "hyperparameter plot"):
        with Image.open(paths[name]) as image:
            assert image.width <= 1400 and image.height <= 1000
        assert paths[name].stat().st_size < 400_000


def test_a_trial_without_best_metric_is_read_at_its_last_value(tmp_path):
    # trials the scheduler stopped report no best_METRIC: their last value counts
    table = synthetic_table().head(50).drop(columns="best_val_loss")
    curve = best_so_far(table, "val_loss", "min")
    assert curve.iloc[-1] == table["val_loss"].min()
    plot_search(table, "val_loss", "min", tmp_path)
    assert (tmp_path / "hyperparameters.png").is_file()


def test_trials_draw_their_own_figures_only_in_small_searches_unless_asked():
    from tune import trial_figures
    from trainers.imaging.mopie_config import MopieConfig

    default = MopieConfig()
    assert trial_figures("auto", default, 20) and not trial_figures("auto", default, 21)
    assert trial_figures("auto", MopieConfig(figures=True), 1000)
    assert not trial_figures("auto", MopieConfig(figures=False), 2)
    assert trial_figures("on", MopieConfig(figures=False), 1000) and not trial_figures("off", default, 1)


def test_a_search_hands_its_callbacks_to_tune_only_while_it_runs(monkeypatch):
    """Tune makes the callbacks named in RAY_TUNE_CALLBACKS itself (after its telemetry import
    of the W&B/MLflow integrations): ours join a user's there during the search, and the
    environment is as it was afterwards, after an error too."""
    import pytest
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.utils.callback import _initialize_env_callbacks

    from distributed.interrupt import GracefulInterrupt
    from distributed.progress import PROGRESS_ENV, EnvironmentSearchProgress
    from distributed.tune import CALLBACKS_ENV, search_callbacks

    monkeypatch.setenv(CALLBACKS_ENV, "ray.tune.logger.CSVLoggerCallback")  # a user's own
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    settings = {"name": "search", "total": 7, "metric": "val_loss", "mode": "min"}
    with search_callbacks(settings):
        made = _initialize_env_callbacks()
    assert [type(c) for c in made] == [CSVLoggerCallback, CSVLoggerCallback, JsonLoggerCallback,
                                       GracefulInterrupt, EnvironmentSearchProgress]
    progress = made[-1]
    assert (progress.name, progress.total, progress.metric, progress.mode) == ("search", 7, "val_loss", "min")
    with pytest.raises(RuntimeError), search_callbacks(None):
        assert len(_initialize_env_callbacks()) == 4  # --verbose: no progress line
        raise RuntimeError("the search failed")
    import os

    assert os.environ[CALLBACKS_ENV] == "ray.tune.logger.CSVLoggerCallback" and PROGRESS_ENV not in os.environ


def test_a_trials_function_unpickles_without_the_trainers_imports():
    """Tune's actor for a trial unpickles the trial's function when it starts, importing its
    module; a heavy one made 16 starting actors so slow that Tune cancelled most of them in a
    search of short trials. The search's trainable wraps distributed.trials' function, and that
    function, unpickled in a fresh interpreter, brings in neither torch nor the trainers."""
    import inspect
    import subprocess
    import sys
    from pathlib import Path

    import ray.cloudpickle

    from distributed import trials
    from distributed.tune import TrialPlan, build_trainable
    from trainers.registry import get_algorithm

    spec = get_algorithm("mopie")
    for mode, expected in (("inline", trials.inline_trial), ("train", trials.train_trial)):
        plan = TrialPlan(mode=mode, concurrency=2, trial_resources={"CPU": 1.0}, workers=None)
        trainable = build_trainable(plan, spec, spec.config_class().model_dump(), Path("unused"), False)
        # tune.with_parameters keeps the function it wraps as `trainable` in its closure
        assert inspect.getclosurevars(trainable).nonlocals["trainable"] is expected
    pickled = ray.cloudpickle.dumps(trials.inline_trial)
    probe = ("import pickle, sys; pickle.loads(sys.stdin.buffer.read()); "
             "print(sorted(m for m in ('torch', 'trainers', 'distributed.tune', 'distributed.worker') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], input=pickled, capture_output=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip().splitlines()[-1] == "[]"
