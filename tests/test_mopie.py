"""The `mopie` engine: exact frames, convergence to the band-limited ceiling, alpha/beta/momentum
act, exact resume, the schedule drives alpha, bad values are rejected by name. Small grids."""
from __future__ import annotations

import pytest
import torch

from trainers.config import ConfigError, build_config
from trainers.context import LocalContext
from trainers.imaging import forward as fw
from trainers.imaging.mopie import MopieEngine, MopieTrainer, sample_positions, to_frames
from trainers.imaging.mopie_config import MopieConfig
from trainers.registry import get_algorithm

# moon 64 px in a 128 grid, fermat, 61 apertures of 21 px (about 60% overlap)
SMALL = dict(obj_size=64, image_size=128, n_samples=61, sample_diameter=21.0, patience=0)
CEILING_MARGIN = 0.02  # after 5 epochs, SSIM >= ceiling - 0.02 (measured: it passes the ceiling)


def make(max_iterations=3, context=None, cls=MopieTrainer, **overrides):
    config = MopieConfig(**{**SMALL, "max_iterations": max_iterations, **overrides})
    return cls(config, context or LocalContext("mopie"))


def run(trainer, n):
    return [trainer.run_iteration()[0] for _ in range(n)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("line", [False, True])
def test_frames_are_exact_and_indexed_by_sample_id(line):
    """At the true spectrum the frame model reproduces every measurement, in any batch order."""
    extra = dict(sample_length=6.0, samples_per_line_meas=3, samples_per_line_rec=3) if line else {}
    config = MopieConfig(**SMALL, **extra)
    truth = fw.pad_to_grid(torch.rand(64, 64), 128)
    positions = sample_positions(config, 3 if line else 1)
    images = fw.measure(fw.to_spectrum(truth), positions, 21.0)
    engine = MopieEngine(to_frames(images, 64), positions, 21.0, 128, 64)
    engine.spectrum = fw.to_spectrum(truth)
    error = engine.epoch(torch.randperm(len(positions)), 7, 1.0, 1.0, 0.0, 1)
    assert float(error) < 1e-9
    assert torch.allclose(engine.reconstruction().real, truth, atol=1e-5)


def test_converges_near_the_band_limited_ceiling():
    trainer = make(5)
    history = run(trainer, 5)
    assert history[-1]["loss"] < 0.01 * history[0]["loss"]
    assert history[-1]["ssim"] >= trainer.ceiling - CEILING_MARGIN, (history[-1]["ssim"], trainer.ceiling)
    assert history[-1]["ceiling_ssim"] == pytest.approx(trainer.ceiling)
    assert {"ssim", "psnr", "rmse"} <= set(history[-1])


def test_alpha_and_beta_act():
    full, half = make(lr=1.0), make(lr=0.4)
    assert run(full, 2)[-1]["ssim"] != run(half, 2)[-1]["ssim"]
    assert not torch.allclose(full.engine.spectrum, half.engine.spectrum)
    probes = {}
    for beta in (0.0, 0.3, 1.0):
        trainer = make(learn_probe=True, beta=beta)
        run(trainer, 2)
        probes[beta] = trainer.engine.probe
    inside = trainer.engine.probe_support.bool()
    assert torch.allclose(probes[0.0][inside], torch.ones(()).to(torch.complex64))  # beta 0 = known pupil
    assert not torch.allclose(probes[0.3], probes[1.0])


def test_momentum_changes_the_trajectory_and_helps():
    """mPIE: a different path, and a better fit (PSNR) after 5 epochs; measured 39.2 vs 37.0 dB.
    (SSIM on this tiny problem wobbles around the ceiling either way; on the 256 grid momentum
    0.5 also gives the higher SSIM after 10 epochs.)"""
    plain, mpie = run(make(momentum=0.0), 5), run(make(momentum=0.5), 5)
    assert plain[0]["ssim"] != mpie[0]["ssim"]
    assert mpie[-1]["psnr"] > plain[-1]["psnr"] + 1.0


def test_resume_is_exact(tmp_path):
    class Interrupted(MopieTrainer):
        def on_iteration_end(self, iteration, metrics):
            if iteration == 3:
                raise KeyboardInterrupt  # dies after checkpoint 2 was written
            return False

    settings = dict(max_iterations=5, learn_probe=True, momentum=0.5, schedule="cosine")
    straight = make(**settings).fit()
    with pytest.raises(KeyboardInterrupt):
        make(context=LocalContext("mopie", tmp_path), cls=Interrupted, **settings).fit()
    resumed_trainer = make(context=LocalContext("mopie", tmp_path), **settings)
    resumed = resumed_trainer.fit()
    keys = ("loss", "ssim", "psnr", "rmse", "lr", "alpha")
    assert len(resumed.history) == len(straight.history) == 5
    for a, b in zip(straight.history, resumed.history):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert resumed.final_metrics == straight.final_metrics
    figures = tmp_path / "figures"
    assert (figures / "reconstruction.png").is_file() and (figures / "coverage.png").is_file()


def test_schedule_drives_alpha():
    trainer = make(3, schedule="step", lr=1.0)  # step_size max(1, 3 // 3) = 1, gamma 0.1
    alphas = [m["alpha"] for m in run(trainer, 3)]
    assert alphas == pytest.approx([1.0, 0.1, 0.01])
    fixed = make(3, schedule="none")
    assert [m["alpha"] for m in run(fixed, 3)] == [1.0, 1.0, 1.0]


def test_config_alias_and_registry():
    assert MopieConfig(alpha=0.7).lr == 0.7
    assert get_algorithm("mopie").metric == "ssim" and get_algorithm("mopie").mode == "max"
    assert get_algorithm("mopie").trainer_class() is MopieTrainer


@pytest.mark.parametrize("values, field", [
    ({"momentum": 1.0}, "momentum"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": 3.0}, "lr"),
    ({"beta": -0.1}, "beta"),
    ({"value_range": "positive"}, "value_range"),
    ({"frame_size": 48}, "frame_size"),        # does not divide 256
    ({"frame_size": 32}, "frame_size"),        # smaller than the 41 px pupil
    ({"alpha": 0.5, "lr": 0.9}, "alpha"),
])
def test_bad_values_are_rejected_by_name(values, field):
    with pytest.raises(ConfigError, match=field):
        build_config(MopieConfig, values)
