"""Born machine end to end on real Ray (the session's 2-CPU instance): `run.py` with 2 DDP workers
on sharded moons, its figures, TensorBoard events and checkpoint, a GAN run refused at the edge
when pointed at that checkpoint with another model shape, and a short `tune.py` search."""
from __future__ import annotations

import pandas as pd
import pytest

import run
import tune
from trainers.checkpoint import load_checkpoint

pytestmark = pytest.mark.ray

# 400 moons (240 training points, 120 per worker), a small MPS, cheap final evaluation
SMALL = ["n_samples=400", "feature_dim=8", "bond_dim=6", "fid_samples=100", "grid_size=64", "pgd_steps=3",
         "lr_scaling=none"]


def sets(values: list[str]) -> list[str]:
    return [f"--set={value}" for value in values]


@pytest.fixture(scope="module")
def classify_run(ray_session, tmp_path_factory):
    """born-classify through run.py with 2 workers (batches of 16 per worker: 32 per DDP step);
    the metrics of its final report."""
    storage = tmp_path_factory.mktemp("born-run")
    reported = {}
    summary = run.print_summary

    def keep_metrics(result, *rest):
        reported.update(result.metrics or {})
        summary(result, *rest)

    run.print_summary = keep_metrics
    try:
        code = run.main(["--algorithm", "born-classify", "--workers", "2", "--storage", str(storage),
                         "--name", "moons", *sets(SMALL),
                         *sets(["lr=0.01", "batch_size=16", "max_iterations=12", "patience=0", "checkpoint_every=4"])])
    finally:
        run.print_summary = summary
    return code, storage / "moons", reported


def test_run_born_classify_two_workers(classify_run):
    code, run_dir, metrics = classify_run
    assert code == 0
    assert metrics["test_acc"] >= 0.97, metrics
    for key in ("test_rob_pgd@0.1", "test_fid", "test_gen_nll", "avg_epoch_seconds"):
        assert key in metrics
    folders = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert folders, f"no checkpoint in {run_dir}"
    payload = load_checkpoint(folders[-1], "born-classify")
    assert payload["iteration"] == 12 and payload["trainer"]["finished"]
    assert payload["config"]["bond_dim"] == 6
    history = payload["trainer"]["history"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    for figure in ("confusion_matrix", "samples", "learning_curves"):
        assert (run_dir / "figures" / f"{figure}.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_gan_run_refuses_a_classifier_of_another_shape(classify_run, capsys):
    """The checkpoint of the 2-worker run has D = 6; a GAN of D = 10 stops at the edge (exit 2)."""
    _, run_dir, _ = classify_run
    checkpoint = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())[-1]
    code = run.main(["--algorithm", "born-gan", "--storage", str(run_dir.parent), "--name", "gan",
                     *sets([value for value in SMALL if not value.startswith("bond_dim")]),
                     "--set", f"classifier_checkpoint={checkpoint}"])
    assert code == 2
    assert "classifier_checkpoint" in capsys.readouterr().err
    assert not (run_dir.parent / "gan").exists()


def test_bad_input_stops_run_py_with_the_field_named(tmp_path, capsys):
    table = tmp_path / "holes.csv"
    table.write_text("a,b,label\n1,,0\n2,3,1\n4,5,0\n")
    for values, message in ((["bond_dim=0"], "bond_dim = 0"), (["feature_dim=1"], "feature_dim = 1"),
                            ([f"dataset={table}"], "missing or infinite feature values"),
                            ([f"dataset={table}", "label_column=kind"], "label_column = 'kind'")):
        code = run.main(["--algorithm", "born-classify", "--storage", str(tmp_path), *sets(values)])
        assert code == 2, values
        assert message in capsys.readouterr().err, values


def test_tune_born_classify_two_trials(ray_session, tmp_path, capsys):
    code = tune.main(["--algorithm", "born-classify", "--num-samples", "2", "--scheduler", "fifo",
                      "--storage", str(tmp_path), "--name", "born-search",
                      *sets(["n_samples=300", "fid_samples=50", "grid_size=32", "pgd_steps=2", "max_iterations=3"])])
    assert code == 0
    table = pd.read_csv(tmp_path / "born-search" / "trials.csv")
    assert len(table) == 2 and (table["status"] == "TERMINATED").all()
    assert (table["training_iteration"] == 3).all() and table["val_loss"].notna().all()
    assert (tmp_path / "born-search" / "trials.parquet").exists()
    out = capsys.readouterr().out
    assert "best trial by val_loss" in out and "config.bond_dim" in out and "config.lr" in out
