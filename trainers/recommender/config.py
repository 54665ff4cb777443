"""Configs of `gat-simple` and `gat-advanced` (pydantic, no torch import)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from trainers.config import ConfigError, Mode, Schedule, TrainerConfig


class GatSimpleConfig(TrainerConfig):
    lr: float = Field(0.005, gt=0, le=10)
    max_iterations: int = Field(20, ge=1, le=100_000)
    patience: int = Field(0, ge=0, le=10_000)
    metric: str = "loss"
    mode: Mode = "min"
    schedule: Schedule = "none"
    batch_size: int = Field(4096, ge=1, le=10_000_000, description="positive edges per BPR step (per worker)")
    embedding_dim: int = Field(64, ge=4, le=1024)
    heads: int = Field(2, ge=1, le=16)
    num_layers: int = Field(2, ge=1, le=6)
    dropout: float = Field(0.1, ge=0, lt=1)
    conv: Literal["gat", "gatv2"] = "gatv2"
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 on the user/song vectors of each BPR batch")
    id_embeddings: list[Literal["user", "song", "artist"]] = Field(
        default_factory=lambda: ["artist"],
        description="node types with a free vector per node; the others are built from their neighbours")
    eval_ks: list[int] = Field(default_factory=lambda: [10, 20], min_length=1)
    item_prior: Literal["none", "ease", "blend"] = Field(
        "none", description="'ease': add an EASE^R item-item score (closed form on the training matrix) to the "
                            "GAT's dot product, so the network learns a residual on top of it; 'blend': the sum of "
                            "the standardised EASE^R, RP3beta and ItemKNN scores instead")
    prior_lambda: float = Field(300.0, gt=0, le=1e7, description="L2 weight of the EASE^R prior")
    prior_alpha: float = Field(0.6, gt=0, le=5, description="RP3beta's transition exponent in the blend prior")
    prior_beta: float = Field(0.5, ge=0, le=2, description="RP3beta's popularity exponent in the blend prior")
    prior_neighbours: int = Field(100, ge=1, le=100_000, description="ItemKNN's neighbours in the blend prior")
    prior_shrink: float = Field(20.0, ge=0, le=1e6, description="ItemKNN's shrinkage in the blend prior")
    prior_folds: int = Field(0, ge=0, le=20, description="the BPR loss scores each training pair with a prior fitted "
                                                         "without that pair's fold of edges; 0: the full prior")
    prior_weight: float = Field(1.0, ge=0, le=1e4, description="weight of the standardised prior in the score")
    # speed (opt-in; CPU behaviour unchanged with both off)
    mixed_precision: bool = Field(False, description="bf16 autocast of the network's forward on CUDA (ignored on "
                                                     "CPU); losses, metrics and optimizer state stay float32")
    compile: bool = Field(False, description="torch.compile the network (pays off on GPU for long runs; the first "
                                             "iterations compile)")
    # data: a user's events file, or the seeded synthetic generator
    events: Optional[str] = Field(None, description="Parquet/CSV of listening events; None = synthetic")
    data_dir: str = Field("data_cache", validate_default=True,
                          description="where generated data is cached (relative: to the starting directory)")
    n_users: int = Field(1000, ge=10, le=10_000_000)
    n_songs: int = Field(5000, ge=10, le=10_000_000)
    n_artists: int = Field(500, ge=2, le=1_000_000)
    n_days: int = Field(30, ge=1, le=3650)
    data_seed: int = Field(42, ge=0, le=2**31 - 1)

    @field_validator("events", "data_dir")
    @classmethod
    def _absolute_path(cls, value: Optional[str]) -> Optional[str]:
        """Relative paths are read against the directory the command was started from: the
        config is validated there (in run.py/tune.py) before it travels to the Ray workers,
        whose working directory is a session folder of Ray's."""
        if value is None:
            return None
        return str(Path(value).expanduser().absolute())

    @model_validator(mode="after")
    def _dimensions_fit_heads(self):
        if self.embedding_dim % self.heads:
            raise ValueError(f"embedding_dim ({self.embedding_dim}) must be a multiple of heads ({self.heads})")
        if any(k < 1 or k > self.n_songs for k in self.eval_ks):
            raise ValueError(f"eval_ks must lie between 1 and n_songs ({self.n_songs})")
        return self

    def check_files(self) -> None:
        if self.events is None:
            return
        from trainers.recommender.events import load_events  # pandas/pyarrow only

        if not Path(self.events).exists():
            raise ConfigError(f"events = {self.events!r}: file does not exist")
        try:
            load_events(self.events)
        except (ValueError, FileNotFoundError, OSError) as error:
            raise ConfigError(f"events = {self.events!r}: {error}") from None


class GatAdvancedConfig(GatSimpleConfig):
    max_iterations: int = Field(60, ge=1, le=100_000)
    patience: int = Field(8, ge=0, le=10_000)
    metric: str = "val_recall@20"
    mode: Mode = "max"
    schedule: Schedule = "plateau"
    val_frac: float = Field(0.15, gt=0, lt=0.5)
    test_frac: float = Field(0.15, gt=0, lt=0.5)
    # the grid point that validation Recall@20 picks across both data sets and 3 seeds of
    # benchmarks/recommender_quality.py (its JSON's gat_default_choice)
    item_prior: Literal["none", "ease", "blend"] = "blend"
    prior_folds: int = Field(5, ge=0, le=20, description="the BPR loss scores each training pair with a prior fitted "
                                                         "without that pair's fold of edges; 0: the full prior")
    prior_weight: float = Field(10.0, ge=0, le=1e4, description="weight of the standardised prior in the score")
    refit: bool = Field(False, description="serving protocol: validation songs join the training set and the model "
                                           "trains for exactly max_iterations (the count selected on validation "
                                           "before), with no early stopping; test metrics at the end")

    @model_validator(mode="before")
    @classmethod
    def _refit_trains_a_fixed_count(cls, data):
        if isinstance(data, dict) and data.get("refit"):
            # nothing is left to validate on: the last iteration is the model, and a plateau
            # schedule (which reads validation) has nothing to read
            data = {**data, "metric": "iterations_trained", "mode": "max", "patience": 0}
            if data.get("schedule", "plateau") == "plateau":
                data["schedule"], data["schedule_kwargs"] = "none", {}
        return data
