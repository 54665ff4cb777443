"""The four Born-machine trainers in-process (LocalContext) on small problems: each learns to a
threshold, resumes exactly, shards its data, and refuses bad input by name."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainers.bornmachine.adversarial import BornAdversarialTrainer
from trainers.bornmachine.config import BornGanConfig
from trainers.bornmachine.gan import BornGanTrainer
from trainers.bornmachine.trainers import BornClassifyTrainer, BornGenerativeTrainer
from trainers.config import ConfigError, build_config
from trainers.context import LocalContext

pytestmark = pytest.mark.usefixtures("one_thread")
# lr_scaling "none": these tests pin what each trainer does at one bond dimension with the learning
# rates they name (test_born_mnist.py tests the rule that scales it with D)
SMALL = dict(n_samples=300, feature_dim=8, bond_dim=6, fid_samples=150, patience=0, lr_scaling="none")
# the classifier behind the GAN tests: 1000 moons, so that 100 test points per class make the
# Frechet distance mean something
MOONS = dict(SMALL, n_samples=1000, fid_samples=300)


def make(trainer_class, context=None, **values):
    config = trainer_class.config_class(**{**SMALL, **values})
    return trainer_class(config, context or LocalContext(trainer_class.algorithm))


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A short born-classify run on moons, with its checkpoints and figures."""
    folder = tmp_path_factory.mktemp("classify")
    torch.set_num_threads(1)
    trainer = make(BornClassifyTrainer, LocalContext("born-classify", folder), **MOONS, max_iterations=12, lr=1e-2)
    return trainer, trainer.fit(), folder


def latest_checkpoint(folder: Path) -> Path:
    return sorted((folder / "checkpoints").glob("checkpoint_*"))[-1]


# ---------------------------------------------------------------- born-classify
def test_classifier_learns_moons_and_tests_the_best_weights(classifier_run):
    trainer, result, folder = classifier_run
    assert result.final_metrics["test_acc"] >= 0.97
    assert result.history[-1]["loss"] < 0.3 * result.history[0]["loss"]
    best = trainer.best_state
    assert all(torch.equal(value, trainer.machine.state_dict()[key]) for key, value in best.items())
    expected = {"test_acc", "test_loss", "test_gen_nll", "test_fid", "test_rob_fgsm@0.1", "test_rob_pgd@0.1",
                "test_rob_fgsm@0.3", "test_rob_pgd@0.3", "avg_epoch_seconds", "test_fid_rff",
                "test_fid_rff_gaussian"}
    assert expected <= set(result.final_metrics)
    for name in ("confusion_matrix", "samples", "learning_curves"):
        assert (folder / "figures" / f"{name}.png").stat().st_size > 1000


def test_resume_is_exact(tmp_path):
    values = dict(max_iterations=4, lr=1e-2)
    straight = make(BornClassifyTrainer, LocalContext("born-classify", tmp_path / "a"), **values).fit()

    class StopAfterTwo(BornClassifyTrainer):
        def on_iteration_end(self, iteration, metrics):
            if iteration == 2:
                raise KeyboardInterrupt
            return False

    with pytest.raises(KeyboardInterrupt):
        make(StopAfterTwo, LocalContext("born-classify", tmp_path / "b"), **values).fit()
    resumed = make(BornClassifyTrainer, LocalContext("born-classify", tmp_path / "b"), **values).fit()
    assert [row["iteration"] for row in resumed.history] == [1, 2, 3, 4]
    assert [row["loss"] for row in resumed.history] == [row["loss"] for row in straight.history]
    assert resumed.final_metrics["test_loss"] == straight.final_metrics["test_loss"]


class ShardContext(LocalContext):
    """A LocalContext that claims to be one rank of two, and records prepare_model."""

    def __init__(self, rank):
        super().__init__("born-classify")
        self.rank, self.world_size, self.prepared = rank, 2, []

    def prepare_model(self, model, **kwargs):
        self.prepared.append(model)
        return super().prepare_model(model)


def test_ranks_train_on_disjoint_shards_in_equal_batches():
    shards = []
    for rank in (0, 1):
        trainer = make(BornClassifyTrainer, ShardContext(rank))
        assert trainer.context.prepared == [trainer.machine]
        batches = trainer.batches(trainer.epoch_generator())
        shards.append(torch.cat(batches))
        assert len(batches) == 2  # ceil(180 training points / (64 x 2 ranks)) on both ranks
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert len(shards[0]) + len(shards[1]) == len(trainer.split_tensors["train"][1])


# ---------------------------------------------------------------- born-generative
def test_generative_learns_a_density_and_controls_the_norm():
    trainer = make(BornGenerativeTrainer, max_iterations=10, feature_dim=10, lr=1e-2, schedule="none")
    result = trainer.fit()
    # a flat density on [0, 1]^2 with two classes has NLL log 2 = 0.69 nats
    assert result.final_metrics["test_gen_nll"] < -0.3
    assert abs(float(trainer.machine.log_partition().detach())) < 1e-4  # rescale: Z = 1 after every step
    for control, shrinks in (("none", False), ("penalty", True)):
        run = make(BornGenerativeTrainer, max_iterations=2, norm_control=control, norm_weight=10.0,
                   schedule="none")
        with torch.no_grad():  # start far from Z = 1, at log Z = 2 (Z scales with label_core^2)
            run.machine.label_core.mul_(torch.exp((2.0 - run.machine.log_partition()) / 2))
        end = abs(run.fit().history[-1]["log_z"])
        assert (end < 0.6) == shrinks, (control, end)


def test_mix_blends_the_classification_loss():
    losses = {}
    for mix in (0.0, 1.0):
        trainer = make(BornGenerativeTrainer, max_iterations=1, mix=mix)
        joint, classification, _ = trainer.batch_losses(*trainer.train_batch(torch.arange(64)))
        trainer.fit()
        losses[mix] = trainer.machine.cores.detach().clone()
    assert not torch.allclose(losses[0.0], losses[1.0])


# ---------------------------------------------------------------- born-gan
def test_gan_from_a_checkpoint_sharpens_samples_and_keeps_accuracy(classifier_run):
    _, _, folder = classifier_run
    checkpoint = latest_checkpoint(folder)
    trainer = make(BornGanTrainer, **MOONS, classifier_checkpoint=str(checkpoint), max_iterations=6, critic_steps=5,
                   lr=3e-3)
    assert trainer.pretrained["pretrain_epochs"] == 0.0  # loaded, not pre-trained
    result = trainer.fit()
    final, best = result.final_metrics, result.best_metrics
    # What the trainer controls, on the validation split it early-stops on. The GAN's trajectory
    # is chaotic in float rounding (torch.einsum orders contractions differently with opt_einsum
    # installed), and on 100 test points per class the test-split distance of one run is noise
    # (measured: -56% here, +15% with opt_einsum, while the validation distance fell 73% and 52%);
    # the held-out bar (>= 30% lower on the test split) is benchmarks/bornmachine.py's, on the
    # default config.
    assert best["val_fid"] <= 0.7 * final["pretrain_val_fid"], (best, final)
    # retraining keeps validation accuracy within the tolerance of the pre-trained model's
    assert best["val_acc"] >= final["goal_acc"] - trainer.config.tolerance - 1e-6, (best, final)
    assert final["test_acc"] >= 0.9


def test_gan_refuses_a_mismatched_or_foreign_checkpoint(classifier_run, tmp_path):
    _, _, folder = classifier_run
    checkpoint = str(latest_checkpoint(folder))
    with pytest.raises(ConfigError, match="classifier_checkpoint.*bond_dim 6 \\(here 10\\)"):
        build_config(BornGanConfig, {**MOONS, "bond_dim": 10, "classifier_checkpoint": checkpoint}).check_files()
    with pytest.raises(ConfigError, match="classifier_checkpoint.*n_samples 1000 \\(here 300\\)"):
        build_config(BornGanConfig, {**SMALL, "classifier_checkpoint": checkpoint}).check_files()
    with pytest.raises(ConfigError, match="classifier_checkpoint.*does not exist"):
        build_config(BornGanConfig, {**SMALL, "classifier_checkpoint": str(tmp_path / "none")}).check_files()
    generative = make(BornGenerativeTrainer, LocalContext("born-generative", tmp_path / "g"), max_iterations=1)
    generative.fit()
    with pytest.raises(ConfigError, match="'born-generative', not 'born-classify'"):
        build_config(BornGanConfig, {**SMALL, "classifier_checkpoint": str(latest_checkpoint(tmp_path / "g"))}
                     ).check_files()


def test_gan_retrains_the_classifier_when_accuracy_drops():
    trainer = make(BornGanTrainer, pretrain_epochs=6, max_iterations=1, critic_steps=1, retrain_max_epochs=3)
    trainer.pretrained["goal_acc"] = 1.5  # unreachable: every epoch looks like a drop
    metrics, _ = trainer.run_iteration()
    assert metrics["retrain_epochs"] == 3 and trainer.retrain_epochs_total == 3


def test_gan_resume_restores_critic_and_pretraining(tmp_path):
    values = dict(pretrain_epochs=4, max_iterations=3, critic_steps=2, gan_loss="wgan-gp")
    straight = make(BornGanTrainer, LocalContext("born-gan", tmp_path / "a"), **values).fit()

    class StopAtTwo(BornGanTrainer):  # iteration 1 was checkpointed, 2 never is
        def on_iteration_end(self, iteration, metrics):
            if iteration == 2:
                raise KeyboardInterrupt
            return False

    with pytest.raises(KeyboardInterrupt):
        make(StopAtTwo, LocalContext("born-gan", tmp_path / "b"), **values).fit()
    resumed = make(BornGanTrainer, LocalContext("born-gan", tmp_path / "b"), **values)
    assert resumed.pretrained == {}  # not pre-trained again: the checkpoint brings it back
    result = resumed.fit()
    assert [row["loss"] for row in result.history] == [row["loss"] for row in straight.history]
    assert result.final_metrics["pretrain_test_fid"] == straight.final_metrics["pretrain_test_fid"]


# ---------------------------------------------------------------- born-adversarial
def test_adversarial_training_buys_robustness_on_digits():
    """4 epochs each on digits; measured with seeds 0, 1, 2: PGD accuracy at eps 0.1 from
    0.64/0.64/0.61 (plain) to 0.72/0.78/0.71 (PGD-AT), clean accuracy 1.7 to 2.8 points lower."""
    values = dict(dataset="digits", feature_dim=2, bond_dim=8, batch_size=32, lr=2e-3, schedule="none",
                  max_iterations=4, patience=0, fid_samples=10, lr_scaling="none")
    plain = BornClassifyTrainer(BornClassifyTrainer.config_class(**values), LocalContext("born-classify")).fit()
    trainer = BornAdversarialTrainer(BornAdversarialTrainer.config_class(**values, curriculum_epochs=2),
                                     LocalContext("born-adversarial"))
    result = trainer.fit()
    assert [row["train_epsilon"] for row in result.history] == [0.05, 0.1, 0.1, 0.1]
    robust, clean = result.final_metrics, plain.final_metrics
    assert robust["test_rob_pgd@0.1"] >= clean["test_rob_pgd@0.1"] + 0.05, (robust, clean)
    assert robust["test_acc"] >= clean["test_acc"] - 0.05


def test_trades_differs_from_pgd_at():
    weights = {}
    for method in ("pgd-at", "trades"):
        trainer = make(BornAdversarialTrainer, dataset="moons", max_iterations=1, method=method, pgd_steps=2)
        trainer.fit()
        weights[method] = trainer.machine.cores.detach().clone()
    assert not torch.allclose(weights["pgd-at"], weights["trades"])


@pytest.mark.parametrize("name", ["born-classify", "born-generative", "born-gan", "born-adversarial"])
def test_search_spaces_cover_the_shared_keys_and_the_trainers_own(name):
    pytest.importorskip("ray")
    from search_spaces import load_search_space

    trainer_class = {"born-classify": BornClassifyTrainer, "born-generative": BornGenerativeTrainer,
                     "born-gan": BornGanTrainer, "born-adversarial": BornAdversarialTrainer}[name]
    space = load_search_space(name).space()
    own = {"born-gan": {"critic_steps", "tolerance"}, "born-adversarial": {"epsilon", "beta"}}.get(name, set())
    assert {"lr", "patience", "schedule", "bond_dim", "feature_dim"} | own <= set(space)
    assert set(space) <= set(trainer_class.config_class.model_fields)


def test_feature_frechet_sees_shape_that_raw_frechet_cannot():
    """On raw coordinates a Gaussian with the moons' own means and covariances is as near to moons
    as a second draw of moons; on the random Fourier features its distance is several times
    larger (measured 5x on the generative benchmark's test splits)."""
    import numpy as np
    from sklearn.datasets import make_moons

    from trainers.bornmachine import metrics

    train, train_labels = make_moons(2000, noise=0.1, random_state=0)
    test, test_labels = make_moons(2000, noise=0.1, random_state=1)
    gaussian, gaussian_labels = metrics.gaussian_baseline_samples(train, train_labels, 2, 2000, seed=0)
    raw_moons = metrics.per_class_frechet(test, test_labels, train, train_labels, 2)
    raw_gaussian = metrics.per_class_frechet(test, test_labels, gaussian, gaussian_labels, 2)
    assert raw_gaussian < 3 * raw_moons + 0.01  # raw: the moment-matched Gaussian looks as good
    embed = metrics.FourierEmbedding.fit(train, seed=0)
    features_moons = metrics.per_class_frechet_features(embed, test, test_labels, train, train_labels, 2)
    features_gaussian = metrics.per_class_frechet_features(embed, test, test_labels, gaussian, gaussian_labels, 2)
    assert features_gaussian > 4 * features_moons
    assert np.isclose(metrics.FourierEmbedding.fit(train, seed=0)(test[:5]), embed(test[:5])).all()  # seeded
