"""End to end on real Ray (2 CPUs, one Ray instance for the session): run.py, a worker crash
and its resume, tune.py with ASHA, Tune over Train with 2 workers per trial."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import run
import tune
from trainers.checkpoint import load_checkpoint

pytestmark = pytest.mark.ray


def latest_checkpoint_state(run_dir):
    folders = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert folders, f"no checkpoint in {run_dir}"
    return load_checkpoint(folders[-1], None)


def test_run_gat_simple_two_workers(ray_session, small_sets, tmp_path):
    code = run.main(["--algorithm", "gat-simple", "--workers", "2", "--storage", str(tmp_path),
                     "--name", "two-workers", *[f"--set={s}" for s in small_sets], "--set", "max_iterations=4"])
    assert code == 0
    run_dir = tmp_path / "two-workers"
    payload = latest_checkpoint_state(run_dir)
    assert payload["algorithm"] == "gat-simple" and payload["iteration"] == 4
    losses = [row["loss"] for row in payload["trainer"]["history"]]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "figures" / "learning_curves.png").stat().st_size > 1000


def test_worker_failure_resumes_from_last_checkpoint(ray_session, small_sets, tmp_path, monkeypatch):
    marker = tmp_path / "failed-once"
    # the last rank raises once when it reports iteration 3; the group restarts from iteration 2
    monkeypatch.setenv("TRAINYARD_FAIL_ONCE", f"3:{marker}")
    code = run.main(["--algorithm", "gat-advanced", "--workers", "2", "--storage", str(tmp_path),
                     "--name", "crash", *[f"--set={s}" for s in small_sets],
                     "--set", "max_iterations=5", "--set", "patience=0", "--max-failures", "1"])
    assert code == 0 and marker.exists()
    payload = latest_checkpoint_state(tmp_path / "crash")
    history = payload["trainer"]["history"]
    assert payload["iteration"] == 5
    assert [int(row["iteration"]) for row in history] == [1, 2, 3, 4, 5]  # nothing repeated or lost
    assert "test_recall@10" in payload["trainer"]["best_metrics"] or payload["trainer"]["finished"]


def test_tune_asha_four_trials(ray_session, small_sets, tmp_path):
    code = tune.main(["--algorithm", "gat-advanced", "--num-samples", "4", "--scheduler", "asha",
                      "--storage", str(tmp_path), "--name", "asha", *[f"--set={s}" for s in small_sets],
                      # the plain GAT: with the EASE^R prior every trial starts from the same ranking, so
                      # their early metrics tie and ASHA has nothing to cut
                      "--set", "max_iterations=4", "--set", "item_prior=none"])
    assert code == 0
    table = pd.read_parquet(tmp_path / "asha" / "trials.parquet")
    assert len(table) == 4 and table["val_recall@20"].notna().all()
    assert pd.read_csv(tmp_path / "asha" / "trials.csv").shape[0] == 4
    assert (tmp_path / "asha" / "metric_per_trial.png").exists()
    # ASHA cut at least one trial short of the full 4 iterations
    assert table["training_iteration"].min() < 4


def test_tune_over_train_two_workers_per_trial(ray_session, small_sets, tmp_path):
    """Each trial holds 0.01 CPU and launches 2 TorchTrainer workers: no deadlock on 2 CPUs."""
    code = tune.main(["--algorithm", "gat-simple", "--num-samples", "2", "--scheduler", "fifo",
                      "--workers-per-trial", "2", "--storage", str(tmp_path), "--name", "over-train",
                      *[f"--set={s}" for s in small_sets], "--set", "max_iterations=2"])
    assert code == 0
    table = pd.read_csv(tmp_path / "over-train" / "trials.csv")
    assert len(table) == 2 and (table["training_iteration"] == 2).all()
    assert table["checkpoint_path"].notna().all()


MOPIE_SMALL = ["obj_size=64", "image_size=128", "n_samples=61", "sample_diameter=21", "patience=0"]


@pytest.mark.parametrize("workers", [1, 2])
def test_run_mopie_writes_its_outputs(ray_session, tmp_path, workers):
    """1 worker, and 2 workers splitting the apertures (gloo all-reduce through Ray Train; batches
    of 20 over 61 samples, so one rank's share of the last batch is empty)."""
    code = run.main(["--algorithm", "mopie", "--storage", str(tmp_path), "--name", "mopie", "--workers", str(workers),
                     *[f"--set={s}" for s in MOPIE_SMALL], "--set", "max_iterations=6", "--set", "batch_size=20"])
    assert code == 0
    run_dir = tmp_path / "mopie"
    payload = latest_checkpoint_state(run_dir)
    assert payload["algorithm"] == "mopie" and payload["iteration"] == 6
    best = payload["trainer"]["best_metrics"]
    assert best["test_ssim"] > 0.9 and best["test_ssim"] > best["ceiling_ssim"] - 0.01
    summary = json.loads((run_dir / "summary.json").read_text())  # what scripts read
    assert summary["workers"] == workers and summary["metrics"]["final_test_ssim"] > 0.9
    for figure in ("reconstruction", "coverage", "learning_curves"):
        assert (run_dir / "figures" / f"{figure}.png").stat().st_size > 1000
    for name in ("reconstruction.npy", "reconstruction_last.npy", "reconstruction_amplitude.png", "quality.csv"):
        assert (run_dir / "reconstruction" / name).is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_tune_mopie_two_trials(ray_session, tmp_path):
    code = tune.main(["--algorithm", "mopie", "--num-samples", "2", "--scheduler", "asha",
                      "--storage", str(tmp_path), "--name", "mopie-search",
                      *[f"--set={s}" for s in MOPIE_SMALL], "--set", "max_iterations=3"])
    assert code == 0
    table = pd.read_csv(tmp_path / "mopie-search" / "trials.csv")
    assert len(table) == 2 and (table["status"] == "TERMINATED").all()
    assert table["test_ssim"].between(0.5, 1.0).all()
    # the best trial's reconstruction, as data, next to trials.csv
    assert (tmp_path / "mopie-search" / "best_reconstruction" / "reconstruction.npy").is_file()
    iterations = dict(zip(table["trial_id"], table["training_iteration"]))
    for trial in (tmp_path / "mopie-search").glob("mopie_*"):
        # no checkpoint at each new best in a search (checkpoint_every 5): one at the end of a
        # trial that ran its 3 iterations, none in a trial ASHA stopped before
        ran = iterations[trial.name.split("_", 1)[1]]
        assert len(list(trial.glob("checkpoint_*"))) == (1 if ran == 3 else 0), (trial, ran)
        # the trial's own files, copied into the storage when it ended; its scalars written by
        # the trial itself (the driver runs no TensorBoard logger)
        assert (trial / "reconstruction" / "reconstruction.npy").is_file() == (ran == 3)
        events = list((trial / "tensorboard").glob("events.out.tfevents.*"))
        assert events and not list(trial.glob("events.out.tfevents.*"))
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        scalars = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
        assert "residual" in scalars and "test_ssim" in scalars


def test_a_diverging_trial_ends_with_its_reason_and_the_search_goes_on(ray_session, tmp_path):
    # no constraints + full steps + heavy momentum after every batch: the second grid point
    # blows up (inf) within 8 epochs; the first (no momentum) converges. Both run on the default 256 grid.
    code = tune.main(["--algorithm", "mopie", "--num-samples", "1", "--scheduler", "fifo",
                      "--storage", str(tmp_path), "--name", "nan-search",
                      "--set", "value_range=none", "--set", "support=false", "--set", "max_iterations=8",
                      "--set", "patience=0", "--grid", "lr=[2.0]", "--grid", "momentum=[0.0, 0.99]",
                      "--grid", "schedule=[none]", "--grid", "batch_size=[16]",
                      "--set", "momentum_every=1"])
    assert code == 0  # one trial finished: the search is a success with one error in its table
    table = pd.read_csv(tmp_path / "nan-search" / "trials.csv").sort_values("config/momentum")
    assert list(table["status"]) == ["TERMINATED", "ERROR"]
    assert "DivergedError" in table["error"].iloc[1] and "diverged at iteration" in table["error"].iloc[1]
    assert table["test_ssim"].iloc[0] > 0.9
