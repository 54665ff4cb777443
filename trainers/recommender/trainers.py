"""`gat-simple` and `gat-advanced`: BPR training of the heterogeneous GAT.

One iteration = one epoch over the training edges (this rank's share of them when several
workers train with DDP). Each optimiser step does one full-graph forward (the graph is small)
and a BPR loss on a mini-batch of positive edges with true negatives.

Speed options: `mixed_precision` runs the network's forwards (training and evaluation) under
bf16 autocast on CUDA, their outputs cast to float32 before the BPR loss and the ranking metrics;
`compile` runs the training forward through `torch.compile` of the (possibly DDP) model, while
`model`/`network` stay the plain modules, so checkpoints keep the plain keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trainers.base import Trainer, make_scheduler
from trainers.context import LocalContext
from trainers.precision import autocast, uses_amp
from trainers.recommender.config import GatAdvancedConfig, GatSimpleConfig
from trainers.recommender.data import (LISTENED_BY, LISTENS, Interactions, build_graph, build_interactions,
                                       sample_negatives, training_keys)
from trainers.recommender.events import load_events
from trainers.recommender.synthetic import ensure_synthetic_dataset
from trainers.recommender.baselines import (ease_user_scores, interaction_matrix, itemknn_weights, rp3beta_weights,
                                            sparse_product)
from trainers.recommender.metrics import ranking_metrics, recall_ndcg_at_k
from trainers.recommender.model import GATRecommender


# the EASE^R prior holds a dense n_songs x n_songs matrix (20k songs: 1.6 GB in float32)
MAX_PRIOR_SONGS = 20_000
# the out-of-fold priors of the BPR loss: folds x n_users x n_songs float32 scores (1.6 GB)
MAX_FOLD_PRIOR_ENTRIES = 400_000_000


def load_config_events(config: GatSimpleConfig):
    if config.events:
        return load_events(config.events)
    path = ensure_synthetic_dataset(config.data_dir, n_users=config.n_users, n_songs=config.n_songs,
                                    n_artists=config.n_artists, n_days=config.n_days, seed=config.data_seed)
    return load_events(path)


def item_prior_scores(x: torch.Tensor, config: GatSimpleConfig) -> torch.Tensor:
    """Item-item scores of every (user, song) from the training matrix ``x``, divided by their
    standard deviation so that `prior_weight` means the same on every data set. A linear
    item-item model is what the GAT's dot product finds hardest to learn from a few thousand
    edges; given as a fixed term, the network learns what it misses (taste that propagates
    through artists and neighbours) instead of relearning it. 'ease' is EASE^R alone; 'blend'
    adds the standardised RP3beta and ItemKNN scores to it: the three make different errors
    (regression, random walk, cosine neighbourhood), and their sum ranks better than any one on
    both of the benchmark's data sets' validation splits."""
    if x.shape[1] > MAX_PRIOR_SONGS:
        raise ValueError(f"item_prior = {config.item_prior!r} holds n_songs x n_songs matrices; "
                         f"{x.shape[1]} songs exceed {MAX_PRIOR_SONGS}: use item_prior = 'none'")
    standardised = lambda scores: scores / scores.std().clamp(min=1e-12)
    scores = standardised(ease_user_scores(x, config.prior_lambda))
    if config.item_prior == "blend":
        scores = (scores + standardised(sparse_product(x, rp3beta_weights(x, config.prior_alpha, config.prior_beta)))
                  + standardised(sparse_product(x, itemknn_weights(x, config.prior_neighbours, config.prior_shrink))))
    return standardised(scores)


@dataclass
class RecommenderData:
    """What every recommender run of a search reads: the split interactions and, with
    an item prior, its standardised scores from every training edge (users x songs, on the CPU)."""

    interactions: Interactions
    prior: torch.Tensor | None


class GatTrainer(Trainer):
    """What both recommender trainers share: data, graph, model, the BPR epoch."""

    split = "none"
    config: GatSimpleConfig

    # the events, their split and the item prior (a dense inverse: most of a default run's
    # setup) are the same for every trial of a search that does not vary them
    shared_data_keys = ("events", "data_dir", "n_users", "n_songs", "n_artists", "n_days", "data_seed",
                        "item_prior", "prior_lambda", "prior_alpha", "prior_beta", "prior_neighbours",
                        "prior_shrink")

    @classmethod
    def build_shared_data(cls, config: GatSimpleConfig) -> RecommenderData:
        events = load_config_events(config)
        data = build_interactions(events, getattr(config, "val_frac", 0.0), getattr(config, "test_frac", 0.0),
                                  split=cls.split, refit=getattr(config, "refit", False))
        prior = item_prior_scores(interaction_matrix(data), config) if config.item_prior != "none" else None
        return RecommenderData(data, prior)

    def setup(self) -> None:
        config = self.config
        shared = self.shared_data()
        self.data = shared.interactions
        # prior_weight scales the shared prior: a space may vary it without rebuilding the prior
        self.prior = None if shared.prior is None else (config.prior_weight * shared.prior).to(self.device)
        if self.prior is not None:
            self.train_prior, self.edge_fold = self.fold_out_prior()
        graph = build_graph(self.data).to(self.device)
        self.edge_index, self.edge_attr = graph.edge_index_dict, graph.edge_attr_dict
        self.train_keys = training_keys(self.data)
        self.network = GATRecommender(
            {"user": self.data.n_users, "song": self.data.n_songs, "artist": self.data.n_artists},
            config.embedding_dim, config.heads, config.num_layers, config.dropout, config.conv,
            tuple(config.id_embeddings), residual_gate=self.prior is not None,
        ).to(self.device)
        self.model = self.context.prepare_model(self.network)
        self.use_amp = uses_amp(config.mixed_precision, self.device)
        # the training forward; `model` and `network` keep the plain state-dict keys (no `_orig_mod.`)
        self.train_model = torch.compile(self.model) if config.compile else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = make_scheduler(self.optimizer, config.schedule, config.max_iterations,
                                        **config.schedule_kwargs)

    def fold_out_prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior the BPR loss sees on training pairs: [folds, n_users, n_songs] scores and the
        fold of every training edge. Fold f's edges are scored by a prior fitted without them.

        A prior fitted on every training edge scores those very edges far above the held-out
        songs it will rank at test time (EASE^R reconstructs its training matrix), so the loss
        finds training pairs already solved and the residual learns little; scored out of fold,
        a training pair looks to the prior as a held-out song does. The message graph leaves the
        batch's edges out for the same reason. With ``prior_folds = 0`` the full prior is used."""
        folds = self.config.prior_folds
        n_edges = len(self.data.train_user)
        if folds == 0:
            return self.prior.unsqueeze(0), torch.zeros(n_edges, dtype=torch.long, device=self.device)
        if folds * self.data.n_users * self.data.n_songs > MAX_FOLD_PRIOR_ENTRIES:
            raise ValueError(f"prior_folds = {folds} holds {folds} x {self.data.n_users} x {self.data.n_songs} scores, "
                             f"over {MAX_FOLD_PRIOR_ENTRIES}: use fewer folds or prior_folds = 0")
        generator = torch.Generator().manual_seed(self.config.seed)
        fold = torch.randperm(n_edges, generator=generator) % folds
        x = interaction_matrix(self.data)
        users, songs = self.data.train_user.long(), self.data.train_song.long()
        priors = []
        for f in range(folds):
            held = fold == f
            x_f = x.clone()
            x_f[users[held], songs[held]] = 0.0
            priors.append(self.config.prior_weight * item_prior_scores(x_f, self.config))
        return torch.stack(priors).to(self.device), fold.to(self.device)

    # ----- hooks with the recommender's own names -----------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch; override for curricula and the like."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Called after each epoch with its metrics; return True to stop training."""
        return False

    def on_iteration_start(self, iteration: int) -> None:
        self.on_epoch_start(iteration)

    def on_iteration_end(self, iteration: int, metrics: dict[str, float]) -> bool:
        return bool(self.on_epoch_end(iteration, metrics))

    # ----- training ---------------------------------------------------------------------------
    def epoch_generator(self, rank: int | None = None) -> torch.Generator:
        """Seeded by (seed, epoch, rank): reproducible across resumes. Negatives use this rank's
        stream; the edge order uses rank 0's on every rank, so that the shards are disjoint."""
        rank = self.context.rank if rank is None else rank
        seed = (self.config.seed * 1_000_003 + self.iteration * 7919 + rank) % (2**63)
        return torch.Generator().manual_seed(seed)

    def training_edge_ids(self) -> torch.Tensor:
        """Edges this epoch trains on (all of them; a curriculum narrows this)."""
        return torch.arange(len(self.data.train_user))

    def edge_batches(self) -> list[torch.Tensor]:
        """This rank's shard of the shuffled edges, in the same number of batches on every rank
        (each batch ends in a DDP all-reduce, so the counts must match)."""
        edges = self.training_edge_ids()
        # the same permutation on every rank (rank 0's seed); each rank takes every world-th edge
        edges = edges[torch.randperm(len(edges), generator=self.epoch_generator(rank=0))]
        world = self.context.world_size
        shard = edges[self.context.rank::world]
        n_batches = max(1, math.ceil(len(edges) / (self.config.batch_size * world)))
        return [batch for batch in torch.tensor_split(shard, n_batches)]

    def message_graph(self, supervised: torch.Tensor) -> tuple[dict, dict]:
        """The graph without the listening edges this batch is trained on.

        Otherwise a user's representation already contains the very song it must score, and
        attention learns to spot the edge instead of the taste; held-out songs are never in the
        graph, so that skill would not carry over to them.
        """
        keep = torch.ones(len(self.data.train_user), dtype=torch.bool, device=self.device)
        keep[supervised.to(self.device)] = False
        edge_index, edge_attr = dict(self.edge_index), dict(self.edge_attr)
        for relation in (LISTENS, LISTENED_BY):
            edge_index[relation] = edge_index[relation][:, keep]
            edge_attr[relation] = edge_attr[relation][keep]
        return edge_index, edge_attr

    def bpr_loss(self, embeddings: dict[str, torch.Tensor], edges: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        users = self.data.train_user[edges]
        positives = self.data.train_song[edges]
        negatives = sample_negatives(users, self.train_keys, self.data.n_songs, generator)
        users, positives, negatives = (t.to(self.device) for t in (users, positives, negatives))
        user_vectors = embeddings["user"][users]
        margin = (GATRecommender.score(user_vectors, embeddings["song"][positives])
                  - GATRecommender.score(user_vectors, embeddings["song"][negatives]))
        if self.prior is not None:
            fold = self.edge_fold[edges.to(self.device)]
            margin = margin + self.train_prior[fold, users, positives] - self.train_prior[fold, users, negatives]
        ranking = -F.logsigmoid(margin).mean()
        # L2 on the vectors that scored this batch (as in BPR / LightGCN)
        penalty = (user_vectors.pow(2).sum() + embeddings["song"][positives].pow(2).sum()
                   + embeddings["song"][negatives].pow(2).sum()) / (2 * len(edges))
        return ranking, self.config.weight_decay * penalty

    def step(self) -> dict[str, float]:
        self.model.train()
        generator = self.epoch_generator()
        total = torch.zeros((), device=self.device)
        batches = self.edge_batches()
        for edges in batches:
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.use_amp):
                embeddings = self.train_model(*self.message_graph(edges))
            embeddings = {kind: value.float() for kind, value in embeddings.items()}  # BPR in float32
            ranking, penalty = self.bpr_loss(embeddings, edges, generator)
            (ranking + penalty).backward()
            self.optimizer.step()
            total += ranking.detach()
        return {"loss": float(total / len(batches))}  # one host sync per epoch

    # ----- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def embeddings(self) -> dict[str, torch.Tensor]:
        self.network.eval()
        with autocast(self.use_amp):
            embeddings = self.network(self.edge_index, self.edge_attr)
        return {kind: value.float().cpu() for kind, value in embeddings.items()}

    def score_function(self):
        embeddings = self.embeddings()
        prior = self.prior.cpu() if self.prior is not None else None
        if prior is None:
            return lambda users: embeddings["user"][users] @ embeddings["song"].T
        return lambda users: embeddings["user"][users] @ embeddings["song"].T + prior[users]


class GatSimpleTrainer(GatTrainer):
    """All edges, fixed LR by default, no validation: its recall is in-sample, and says so."""

    algorithm = "gat-simple"
    config_class = GatSimpleConfig

    def evaluate(self) -> dict[str, float]:
        return in_sample_metrics(self.score_function(), self.data, self.config.eval_ks)


class GatAdvancedTrainer(GatTrainer):
    """Temporal split, validation-driven early stopping and schedule, test on the best model."""

    algorithm = "gat-advanced"
    config_class = GatAdvancedConfig
    split = "temporal"
    shared_data_keys = GatTrainer.shared_data_keys + ("val_frac", "test_frac", "refit")

    def evaluate(self) -> dict[str, float]:
        if self.config.refit:  # no validation songs left: the count of iterations is the schedule
            return {"iterations_trained": float(self.iteration + 1)}
        metrics = ranking_metrics(self.score_function(), self.data, split="val", ks=tuple(self.config.eval_ks))
        return {f"val_{key}": value for key, value in metrics.items()}

    def final_metrics(self) -> dict[str, float]:
        metrics = ranking_metrics(self.score_function(), self.data, split="test", ks=tuple(self.config.eval_ks))
        return {f"test_{key}": value for key, value in metrics.items()}


class CurriculumTrainer(GatAdvancedTrainer):
    """Example of the hooks: start on the most-played edges, widen to all of them by epoch 5."""

    fractions = (0.2, 0.4, 0.6, 0.8, 1.0)

    def on_epoch_start(self, epoch: int) -> None:
        self.edge_fraction = self.fractions[min(epoch, len(self.fractions) - 1)]

    def training_edge_ids(self) -> torch.Tensor:
        by_weight = torch.argsort(self.data.train_attr[:, 0], descending=True, stable=True)
        return by_weight[: max(1, int(len(by_weight) * getattr(self, "edge_fraction", 1.0)))]


def in_sample_metrics(score_fn, data, ks: list[int]) -> dict[str, float]:
    """Recall/NDCG of the training items themselves (nothing masked): a fit measure, not a test."""
    users = torch.unique(data.train_user)
    scores = score_fn(users)
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    row_of_user = torch.full((data.n_users,), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(len(users))
    relevant[row_of_user[data.train_user], data.train_song] = True
    top = scores.topk(max(ks), dim=1).indices
    metrics = {}
    for k in ks:
        recall, ndcg = recall_ndcg_at_k(top, relevant, k)
        metrics[f"insample_recall@{k}"] = float(recall.mean())
        metrics[f"insample_ndcg@{k}"] = float(ndcg.mean())
    return metrics


TRAINER_KINDS = {"simple": GatSimpleTrainer, "advanced": GatAdvancedTrainer, "curriculum": CurriculumTrainer}


def create_trainer(kind: str, config: GatSimpleConfig | dict[str, Any] | None = None, context=None, **overrides):
    """Factory by name: create_trainer("simple" | "advanced" | "curriculum", ...)."""
    if kind not in TRAINER_KINDS:
        raise ValueError(f"unknown trainer kind {kind!r}; choose one of: {', '.join(TRAINER_KINDS)}")
    trainer_class = TRAINER_KINDS[kind]
    if config is None or isinstance(config, dict):
        config = trainer_class.config_class(**{**(config or {}), **overrides})
    context = context or LocalContext(trainer_class.algorithm)
    return trainer_class(config, context)
