"""An algorithm from outside the project: examples/custom_algorithm pip-installed into this
environment (its entry point read from the installed metadata) and run through run.py with 2
workers and tune.py with 2 trials on the session's real Ray, both logging to MLflow, read back
with MLflow's client."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

import run
import tune
from trainers import registry
from trainers.checkpoint import load_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.long]  # pip-installs the example, then real Ray runs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_algorithm"
DIST = "trainyard-digits"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def installed():
    """pip install -e of the example (offline: no dependencies, no build isolation); removed
    again afterwards unless it was installed before."""
    try:
        metadata.distribution(DIST)
        was_there = True
    except metadata.PackageNotFoundError:
        was_there = False
        pip("install", "--no-deps", "--no-build-isolation", "-e", str(EXAMPLE))
    # Ray's worker processes start after the install and import it through its .pth; this
    # process started before, so it is given the path the editable install points to
    sys.path.insert(0, str(EXAMPLE))
    registry.reload()
    yield
    sys.path.remove(str(EXAMPLE))
    if not was_there:
        pip("uninstall", "-y", DIST)
    registry.reload()


@pytest.fixture
def mlruns(tmp_path, monkeypatch):
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this for a file store
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_the_example_is_registered_by_its_own_package(installed):
    spec = registry.get_algorithm("digits-mlp")
    assert "package 'trainyard-digits'" in spec.origin and spec.metric == "val_acc"
    assert "digits-mlp" in registry.algorithm_names()


def test_run_the_example_with_two_workers_and_mlflow(installed, ray_session, tmp_path, mlruns, capsys):
    code = run.main(["--algorithm", "digits-mlp", "--workers", "2", "--storage", str(tmp_path), "--name", "mlp",
                     "--set", "max_iterations=4", "--set", "patience=0", "--mlflow"])
    assert code == 0
    run_dir = tmp_path / "mlp"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["metrics"]["test_acc"] > 0.85  # 10 classes: chance is 0.1
    payload = load_checkpoint(summary["checkpoint"], "digits-mlp")
    assert payload["iteration"] == 4 and len(payload["trainer"]["history"]) == 4
    # the final table lists the held-out metrics first
    out = capsys.readouterr().out
    # the quiet console: one progress line for the run, no line per iteration
    assert sum(line.startswith("mlp ") and "4/4" in line for line in out.splitlines()) == 1
    assert "iter 1/4" not in out
    table = out[out.index("finished in"):]
    assert table.index("test_acc") < table.index("val_acc") < table.index("wall time")
    # MLflow: one run in the algorithm's experiment, params = the config, metrics per iteration
    experiment = mlruns.get_experiment_by_name("digits-mlp")
    [mlflow_run] = mlruns.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_name == "mlp" and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["hidden"] == "64" and mlflow_run.data.params["max_iterations"] == "4"
    history = mlruns.get_metric_history(mlflow_run.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert mlflow_run.data.tags["final_checkpoint"] == summary["checkpoint"]
    artifacts = {a.path for a in mlruns.list_artifacts(mlflow_run.info.run_id)}
    figures = {a.path for a in mlruns.list_artifacts(mlflow_run.info.run_id, "figures")}
    assert "final_checkpoint.txt" in artifacts and "figures/learning_curves.png" in figures


def test_tune_the_example_two_trials_with_mlflow(installed, ray_session, tmp_path, mlruns):
    code = tune.main(["--algorithm", "digits-mlp", "--num-samples", "2", "--scheduler", "fifo",
                      "--storage", str(tmp_path), "--name", "mlp-search", "--set", "max_iterations=3", "--mlflow"])
    assert code == 0
    table = pd.read_csv(tmp_path / "mlp-search" / "trials.csv")
    # 3 epochs: the space's smallest learning rates are still far from done, but well above chance (0.1)
    assert len(table) == 2 and (table["status"] == "TERMINATED").all() and (table["val_acc"] > 0.2).all()
    assert all(Path(p).name.startswith("digits-mlp_") for p in table["path"])  # trial names carry the algorithm
    experiment = mlruns.get_experiment_by_name("mlp-search")  # one experiment per search
    runs = mlruns.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(table["trial_id"])
    for mlflow_run in runs:
        row = table[table["trial_id"] == mlflow_run.data.tags["trial_id"]].iloc[0]
        assert float(mlflow_run.data.params["lr"]) == pytest.approx(row["config/lr"])
        assert sorted(m.step for m in mlruns.get_metric_history(mlflow_run.info.run_id, "val_acc")) == [1, 2, 3]
        assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["final_checkpoint"]


def test_a_twenty_trial_search_prints_a_screen_not_a_table_per_trial(installed, ray_session, tmp_path, capsys):
    """What tune.py itself prints (Ray's worker logs aside, which a CLI-started Ray keeps out of
    the console): a header, one progress line and the final table; Ray Tune's per-trial status
    tables only with --verbose."""
    code = tune.main(["--algorithm", "digits-mlp", "--num-samples", "20", "--scheduler", "fifo",
                      "--storage", str(tmp_path), "--name", "twenty", "--set", "max_iterations=1"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(pd.read_csv(tmp_path / "twenty" / "trials.csv")) == 20
    assert len(lines) < 40 and sum("twenty" in line and "20/20" in line for line in lines) == 1
    assert not any("Trial status" in line or "Current time" in line for line in lines)
