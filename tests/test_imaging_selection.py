"""Imaging selection reads the data only: a wrong ground truth changes the `test_*` figures and
nothing else (trajectory, best state, early stop); prism's retry is kept only when it lowers the
validation error; every run writes its reconstruction as data. Small grids (2 CPU cores)."""
from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch

from trainers.context import LocalContext
from trainers.imaging import forward as fw
from trainers.imaging import common
from trainers.imaging.experiment import simulate_experiment
from trainers.imaging.mopie import MopieTrainer
from trainers.imaging.mopie_config import MopieConfig
from trainers.imaging.prism import PrismTrainer, validation_split
from trainers.imaging.prism_config import PrismConfig

pytestmark = pytest.mark.usefixtures("one_thread")

MOPIE = dict(obj_size=64, image_size=128, n_samples=61, sample_diameter=21.0, max_iterations=8, patience=2, min_delta=5e-4,
             lr=1.5, momentum=0.7)
PRISM = dict(obj_size=32, image_size=64, n_samples=8, sample_diameter=11.0, decoder_width=8,
             steps_per_sample=10, init_steps=30, patience=2, validation_fraction=0.25, max_iterations=9)


def wrong_truth(monkeypatch, module):
    """Make the trainers in `module` see a wrong ground truth (the object flipped and darkened)
    beside the right measurements."""
    def simulate(config, device):
        experiment = simulate_experiment(config, device)
        small = 0.5 * experiment.truth_small.flip(0, 1)
        return dataclasses.replace(experiment, truth_small=small, truth=fw.pad_to_grid(small, config.image_size),
                                   ceiling=0.123)
    monkeypatch.setattr(common, "load_experiment", simulate)


def decisions(result):
    """Everything a decision produced, without the truth-based figures."""
    rows = [{k: v for k, v in row.items() if not k.startswith(("test_", "ceiling", "coverage_ceiling"))
             and not k.endswith("seconds")} for row in result.history]
    return rows, result.best_iteration, result.stopped_early, result.iterations


@pytest.mark.parametrize("trainer_class, config_class, settings", [
    # prism at a larger step: its validation error then rises and stops the run, so the best state
    # is not simply the last one
    (MopieTrainer, MopieConfig, MOPIE), (PrismTrainer, PrismConfig, dict(PRISM, lr=1e-2))])
def test_a_wrong_ground_truth_changes_no_decision(monkeypatch, trainer_class, config_class, settings):
    right = trainer_class(config_class(**settings), LocalContext(trainer_class.algorithm))
    right_result = right.fit()
    wrong_truth(monkeypatch, common)
    wrong = trainer_class(config_class(**settings), LocalContext(trainer_class.algorithm))
    wrong_result = wrong.fit()
    assert decisions(right_result) == decisions(wrong_result)
    assert right_result.stopped_early or right_result.best_iteration < right_result.iterations, \
        "the test needs a run whose best state is not simply its last one"
    for key, value in right.model_state().items():  # the restored best state
        assert torch.equal(value, wrong.model_state()[key])
    # the truth-based figures did see the wrong truth
    assert right_result.history[-1]["test_ssim"] != wrong_result.history[-1]["test_ssim"]
    assert wrong_result.final_metrics["final_test_ssim"] < right_result.final_metrics["final_test_ssim"]


def test_truth_metrics_cannot_select():
    from trainers.config import ConfigError, build_config

    for metric in ("ssim", "test_ssim", "final_test_psnr"):
        with pytest.raises(ConfigError, match="metric"):
            build_config(PrismConfig, {"metric": metric})


def test_validation_split_holds_out_covered_apertures():
    config = PrismConfig()
    trainer_positions = simulate_experiment(config, torch.device("cpu")).positions
    fitted, held = validation_split(trainer_positions, config.sample_diameter, config.image_size, 0.1)
    assert len(held) == 4 and 0 not in held.tolist()
    assert sorted(fitted.tolist() + held.tolist()) == list(range(config.n_samples))
    assert validation_split(trainer_positions, config.sample_diameter, config.image_size, 0.0)[1].numel() == 0


def test_a_retry_that_lowers_the_validation_error_is_kept():
    """Every sample fails (an unreachable threshold, a short budget); each retry continues from
    the current state with the failed aperture emphasised: it lowers that aperture's own error
    and is kept only when the validation error falls, and `recovered` counts exactly those."""
    trainer = PrismTrainer(PrismConfig(**{**PRISM, "n_samples": 6, "patience": 0, "loss_threshold": 1e-6, "max_iterations": 20,
                                          "max_cycles": 1, "escalation": "none"}), LocalContext("prism"))
    result = trainer.fit()
    retries = [row for row in result.history if row["retry"]]
    assert len(retries) == trainer.n_total == len(trainer.failed)
    kept = [row for row in retries if row["retry_kept"]]
    assert kept, "no retry helped"
    assert all(row["retry_val_after"] < row["retry_val_before"] for row in kept)
    assert all(row["retry_sample_error_after"] < row["retry_sample_error_before"] for row in kept)
    assert result.final_metrics["recovered_samples"] == len(kept) == len(trainer.recovered)


def test_a_retry_that_raises_the_validation_error_is_undone(monkeypatch):
    trainer = PrismTrainer(PrismConfig(**{**PRISM, "n_samples": 4, "loss_threshold": 1e-6, "steps_per_sample": 10,
                                          "max_cycles": 1}), LocalContext("prism"))
    for _ in range(trainer.n_total):
        trainer.run_iteration()
    fit = trainer._fit

    def harmful(*args, **kwargs):  # a fit that wrecks the decoder
        out = fit(*args, **kwargs)
        with torch.no_grad():
            for parameter in trainer.model.parameters():
                parameter.add_(torch.randn_like(parameter))
        return out
    monkeypatch.setattr(trainer, "_fit", harmful)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    row = trainer.run_iteration()[0]
    assert row["retry"] == 1 and row["retry_kept"] == 0 and row["retry_val_after"] > row["retry_val_before"]
    assert all(torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
    assert trainer.recovered == []


def test_every_run_writes_its_reconstruction(tmp_path):
    trainer = MopieTrainer(MopieConfig(**{**MOPIE, "max_iterations": 3, "patience": 0}),
                           LocalContext("mopie", tmp_path))
    trainer.fit()
    folder = tmp_path / "reconstruction"
    best = np.load(folder / "reconstruction.npy")
    assert best.dtype == np.complex64 and best.shape == (128, 128)
    assert np.allclose(best, trainer.reconstruction().numpy())
    assert np.load(folder / "reconstruction_last.npy").shape == (128, 128)
    from PIL import Image

    for name in ("reconstruction_amplitude.png", "reconstruction_phase.png"):
        image = Image.open(folder / name)
        assert image.mode.startswith("I;16") and image.size == (64, 64)
    amplitude = np.asarray(Image.open(folder / "reconstruction_amplitude.png"), dtype=np.float64) / 65535
    window = np.abs(fw.crop_to_object(torch.from_numpy(best), 64).numpy())
    assert np.abs(amplitude - np.clip(window, 0, 1)).max() < 1e-4
    rows = list(csv.DictReader(open(folder / "quality.csv")))
    assert len(rows) == 3 and {"iteration", "residual", "test_ssim", "test_psnr", "test_rmse"} <= set(rows[0])


def test_figures_off_still_writes_the_reconstruction_and_draws_nothing(tmp_path):
    trainer = MopieTrainer(MopieConfig(**{**MOPIE, "max_iterations": 2, "patience": 0, "figures": False}),
                           LocalContext("mopie", tmp_path))
    trainer.fit()
    assert np.allclose(np.load(tmp_path / "reconstruction" / "reconstruction.npy"), trainer.reconstruction().numpy())
    assert (tmp_path / "reconstruction" / "quality.csv").is_file()
    # the 16-bit amplitude and phase images are the reconstruction as data, not figures
    assert {"reconstruction_amplitude.png", "reconstruction_phase.png"} <= {
        path.name for path in (tmp_path / "reconstruction").glob("*.png")}
    assert not list((tmp_path / "figures").glob("*.png"))
    drawn = MopieTrainer(MopieConfig(**{**MOPIE, "max_iterations": 2, "patience": 0}),
                         LocalContext("mopie", tmp_path / "drawn"))
    drawn.fit()
    assert {"reconstruction.png", "coverage.png", "learning_curves.png"} <= {
        path.name for path in (tmp_path / "drawn" / "figures").glob("*.png")}
