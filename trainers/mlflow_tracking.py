"""MLflow tracking (opt-in, `--mlflow`): one MLflow run per training run or Tune trial.

The command line resolves where runs go (MLFLOW_TRACKING_URI, else a local `mlruns/` file store
in the folder it was started from) and the experiment (one per algorithm for run.py, one per
search for tune.py), and passes both to the workers. The process that owns a training run
(run.py, or a Tune trial) opens its MLflow run with the config as params; rank 0 logs every
iteration's metrics and the figures; the command line adds the final checkpoint's path at the
end. A run is found again by a tag (the run name, the trial id), so that a restarted worker group
or a resumed search logs into the same MLflow run instead of opening a second one.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

KEY_TAG = "trainyard.key"


def tracking(experiment: str) -> dict[str, str]:
    """In the command line: {"uri", "experiment_id"}, the experiment created if new."""
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
    _allow_file_store(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    return {"uri": uri, "experiment_id": experiment_id}


def _client(settings: dict[str, str]):
    from mlflow.tracking import MlflowClient

    _allow_file_store(settings["uri"])
    return MlflowClient(settings["uri"])


def _allow_file_store(uri: str) -> None:
    """MLflow 3 refuses its file store (`mlruns/`, in maintenance mode) unless told otherwise; it
    is the store that needs no server or database and takes writes from many trial processes."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _find(client, settings: dict[str, str], key: str):
    runs = client.search_runs([settings["experiment_id"]], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                              max_results=1)
    return runs[0] if runs else None


def open_run(settings: dict[str, str], key: str, run_name: str, params: dict[str, Any],
             tags: dict[str, str] | None = None) -> dict[str, str]:
    """The MLflow run of `key`, created with the params the first time; returns the settings
    with its run_id (what RunLogger takes)."""
    from mlflow.entities import Param

    client = _client(settings)
    existing = _find(client, settings, key)
    if existing is not None:
        return {**settings, "run_id": existing.info.run_id}
    run = client.create_run(settings["experiment_id"], run_name=run_name, tags={KEY_TAG: key, **(tags or {})})
    values = [Param(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in sorted(params.items())]
    for start in range(0, len(values), 100):  # MLflow takes at most 100 params per call
        client.log_batch(run.info.run_id, params=values[start:start + 100])
    return {**settings, "run_id": run.info.run_id}


def finish_run(settings: dict[str, str], key: str, checkpoint_path: str | None, status: str = "FINISHED") -> None:
    """After the run (the command line): the final checkpoint's path as an artifact and a tag."""
    client = _client(settings)
    run = _find(client, settings, key)
    if run is None:
        return
    if checkpoint_path:
        client.set_tag(run.info.run_id, "final_checkpoint", checkpoint_path)
        client.log_text(run.info.run_id, checkpoint_path + "\n", "final_checkpoint.txt")
    client.set_terminated(run.info.run_id, status)


class MlflowLogger:
    """Rank 0's side: metrics per iteration and figures into an open MLflow run."""

    def __init__(self, settings: dict[str, str]):
        self.client, self.run_id = _client(settings), settings["run_id"]

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow names take letters, digits, _-./ and spaces: recall@10 is logged as recall_at_10
        values = [Metric(key.replace("@", "_at_"), float(value), now, step) for key, value in metrics.items()
                  if isinstance(value, (int, float)) and key != "iteration"]
        for start in range(0, len(values), 1000):
            self.client.log_batch(self.run_id, metrics=values[start:start + 1000])

    def log_figure(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), "figures")
