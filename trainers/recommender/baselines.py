"""Classic recommenders reported beside the GAT, evaluated with the same protocol
(:func:`trainers.recommender.metrics.ranking_metrics`: all items, seen items masked).

* :func:`popularity_baseline` - most popular songs (weak floor).
* :func:`artist_share_scores` - user's play share of the song's artist x popularity.
* :func:`itemknn_scores` - item-item cosine with shrinkage, top-k neighbours per item.
* :func:`rp3beta_scores` - three-step random walk user-item-user-item, popularity-penalised.
* :func:`ease_scores` - EASE^R (Steck 2019), the closed-form item-item regression.
* :func:`ials_scores` - implicit ALS (Hu, Koren, Volinsky 2008) through the `implicit` package.
* :func:`lightgcn_baseline` - PyG LightGCN with BPR and true negatives.

The neighbourhood and linear models work on the binary user x song training matrix X (dense:
the catalogues here have a few thousand songs). :data:`GRIDS` holds each model's stated grid;
:class:`BaselineParams` subclasses check each value's range.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Callable, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch_geometric.nn import LightGCN

from .data import Interactions, sample_negatives, training_keys
from .metrics import ranking_metrics

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- hyperparameters
class BaselineParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ItemKNNParams(BaselineParams):
    neighbours: int = Field(100, ge=1, le=100_000, description="top-k most similar items kept per item")
    shrink: float = Field(0.0, ge=0, le=1e6, description="added to the cosine's denominator")


class RP3betaParams(BaselineParams):
    alpha: float = Field(1.0, gt=0, le=5, description="exponent of the transition probabilities")
    beta: float = Field(0.5, ge=0, le=2, description="exponent of the target item's popularity penalty")


class EASEParams(BaselineParams):
    lam: float = Field(100.0, gt=0, le=1e7, description="L2 weight of the item-item regression")


class IALSParams(BaselineParams):
    factors: int = Field(64, ge=1, le=4096)
    regularization: float = Field(0.01, ge=0, le=1e4)
    alpha: float = Field(10.0, gt=0, le=1e4, description="confidence of an observed pair: 1 + alpha")
    iterations: int = Field(15, ge=1, le=1000)


class LightGCNParams(BaselineParams):
    num_layers: int = Field(3, ge=1, le=6)
    lambda_reg: float = Field(1e-3, ge=0, le=1)
    lr: float = Field(1e-2, gt=0, le=1)
    embedding_dim: int = Field(64, ge=4, le=1024)


class NoParams(BaselineParams):
    pass


PARAMS = {"popularity": NoParams, "artist-share": NoParams, "itemknn": ItemKNNParams, "rp3beta": RP3betaParams, "ease": EASEParams,
          "ials": IALSParams, "lightgcn": LightGCNParams}

# Four configurations per model with hyperparameters (popularity and artist-share have none), chosen on validation
# Recall@20. Ranges are the usual ones for these models on data sets of this size; each grid holds the values
# the GAT's blend prior uses (GatSimpleConfig.prior_*), so that no baseline is denied the configuration the
# GAT builds on.
GRIDS: dict[str, list[dict]] = {
    "popularity": [{}],
    "artist-share": [{}],
    "itemknn": [{"neighbours": k, "shrink": h} for k in (100, 200) for h in (0.0, 20.0)],
    "rp3beta": [{"alpha": a, "beta": b} for a in (0.4, 0.6) for b in (0.3, 0.5)],
    "ease": [{"lam": lam} for lam in (30.0, 100.0, 300.0, 1000.0)],
    "ials": [{"factors": f, "regularization": r} for f in (64, 128) for r in (0.01, 1.0)],
    "lightgcn": [{"num_layers": n, "lambda_reg": r} for n in (2, 3) for r in (1e-4, 1e-3)],
}


def check_grid(model: str, grid: Sequence[dict]) -> list[BaselineParams]:
    """Validated parameter objects of ``grid``; ValueError naming the model, field and range."""
    if model not in PARAMS:
        raise ValueError(f"unknown baseline {model!r}; choose one of: {', '.join(PARAMS)}")
    if not grid:
        raise ValueError(f"{model}: the grid is empty")
    checked = []
    for point in grid:
        try:
            checked.append(PARAMS[model](**point))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{model}.{field} = {first.get('input')!r}: {first['msg']}") from None
    return checked


# ----------------------------------------------------------------------------- matrix models
def interaction_matrix(inter: Interactions) -> torch.Tensor:
    """Binary training matrix X [n_users, n_songs] (float32)."""
    x = torch.zeros(inter.n_users, inter.n_songs)
    x[inter.train_user.long(), inter.train_song.long()] = 1.0
    return x


def item_item_scores(x: torch.Tensor, weights: torch.Tensor) -> ScoreFn:
    """score(u) = X[u] @ W: a user's songs vote for the songs similar to them. Every user's
    scores are computed once, through the sparse X (a few percent of its entries are ones), so
    that evaluating on validation and test costs a lookup instead of a dense matmul each."""
    return precomputed_scores(sparse_product(x, weights))


def sparse_product(x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """x @ dense for a binary (mostly zero) x, through x's sparse form."""
    return torch.sparse.mm(x.to_sparse(), dense)


def precomputed_scores(scores: torch.Tensor) -> ScoreFn:
    return lambda users: scores[users]


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """X^T X (co-occurrence counts of every item pair), through the sparse X^T."""
    return torch.sparse.mm(x.T.to_sparse(), x)


def itemknn_weights(x: torch.Tensor, neighbours: int, shrink: float) -> torch.Tensor:
    """W[i, j] = |users(i) & users(j)| / (|users(i)|^0.5 |users(j)|^0.5 + shrink), zero diagonal,
    only the ``neighbours`` largest entries of each column j kept (the songs most like j)."""
    co = gram_matrix(x)
    norm = co.diagonal().sqrt()
    sim = co / (norm[:, None] * norm[None, :] + shrink).clamp(min=1e-12)
    sim.fill_diagonal_(0.0)
    k = min(neighbours, sim.shape[0])
    top = sim.topk(k, dim=0)
    return torch.zeros_like(sim).scatter_(0, top.indices, top.values)


def rp3beta_weights(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """W = (P_iu^alpha @ P_ui^alpha) / pop_j^beta with zero diagonal, where P_ui = X / deg(u)
    and P_iu = X^T / deg(i) are the row-stochastic transition matrices of the bipartite graph
    (Paudel et al. 2017)."""
    user_deg = x.sum(1, keepdim=True).clamp(min=1)
    item_deg = x.sum(0).clamp(min=1)
    p_ui = (x / user_deg).pow(alpha)
    p_iu = (x.T / item_deg[:, None]).pow(alpha)
    w = torch.sparse.mm(p_iu.to_sparse(), p_ui)
    w = w / item_deg.pow(beta)[None, :]
    w.fill_diagonal_(0.0)
    return w


def ease_weights(x: torch.Tensor, lam: float) -> torch.Tensor:
    """EASE^R: B = argmin ||X - XB||^2 + lam ||B||^2 with diag(B) = 0, in closed form
    B = I - P diagMat(1 / diag(P)) with P = (X^T X + lam I)^-1, i.e. B_ij = -P_ij / P_jj."""
    gram = (x.T @ x).double()
    gram.diagonal().add_(lam)
    p = torch.linalg.inv(gram)
    b = -p / p.diagonal()[None, :]
    b.fill_diagonal_(0.0)
    return b.float()


def ease_user_scores(x: torch.Tensor, lam: float) -> torch.Tensor:
    """X @ B for every user, B = :func:`ease_weights` (x, lam), without the n_songs x n_songs
    inverse when there are fewer users than songs. By the push-through identity
    X (X^T X + lam I)^-1 = (X X^T + lam I)^-1 X, so with M = (X X^T + lam I)^-1 (users x users)
    X P = M X and P_jj = (1 - x_j^T M x_j) / lam, where x_j is song j's column; then
    X B = X (I - P diagMat(1 / diag(P))) = X - (M X) / diag(P). On 1000 users x 4500 songs
    this takes about a second instead of the inverse's twenty."""
    n_users, n_songs = x.shape
    if n_songs <= n_users:
        return sparse_product(x, ease_weights(x, lam))
    xd = x.double()
    gram = torch.sparse.mm(xd.to_sparse(), xd.T)
    gram.diagonal().add_(lam)
    mx = torch.linalg.solve(gram, xd)
    p_diag = (1.0 - (xd * mx).sum(0)) / lam
    return (xd - mx / p_diag[None, :]).float()


def itemknn_scores(inter: Interactions, params: ItemKNNParams) -> ScoreFn:
    x = interaction_matrix(inter)
    return item_item_scores(x, itemknn_weights(x, params.neighbours, params.shrink))


def rp3beta_scores(inter: Interactions, params: RP3betaParams) -> ScoreFn:
    x = interaction_matrix(inter)
    return item_item_scores(x, rp3beta_weights(x, params.alpha, params.beta))


def ease_scores(inter: Interactions, params: EASEParams) -> ScoreFn:
    return precomputed_scores(ease_user_scores(interaction_matrix(inter), params.lam))


def ials_scores(inter: Interactions, params: IALSParams, seed: int = 0) -> ScoreFn:
    """Implicit ALS from the `implicit` package (confidence 1 + alpha on observed pairs)."""
    import numpy as np
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    rows, cols = inter.train_user.numpy(), inter.train_song.numpy()
    matrix = sp.csr_matrix((np.full(len(rows), params.alpha, dtype=np.float32), (rows, cols)),
                           shape=(inter.n_users, inter.n_songs))
    model = AlternatingLeastSquares(factors=params.factors, regularization=params.regularization,
                                    alpha=1.0, iterations=params.iterations, random_state=seed,
                                    num_threads=1, calculate_training_loss=False)
    model.fit(matrix, show_progress=False)
    users = torch.from_numpy(np.asarray(model.user_factors)).float()
    songs = torch.from_numpy(np.asarray(model.item_factors)).float()
    return lambda batch: users[batch] @ songs.T


def popularity_scores(inter: Interactions, params: NoParams | None = None) -> ScoreFn:
    pop = song_popularity(inter)
    return lambda users: pop.expand(len(users), -1)


def song_popularity(inter: Interactions) -> torch.Tensor:
    """Number of training users per song (FloatTensor[n_songs])."""
    return torch.bincount(inter.train_song.long(), minlength=inter.n_songs).float()


def popularity_baseline(inter: Interactions, split: str = "test",
                        ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Everyone gets the songs with the most training listeners (minus their own)."""
    return ranking_metrics(popularity_scores(inter), inter, split, ks)


def artist_share_scores(inter: Interactions, params: NoParams | None = None) -> ScoreFn:
    """score(u, s) = share of u's training plays on artist(s) x popularity(s) + a tiny
    popularity term, so songs of artists the user never played are still ordered."""
    pop = song_popularity(inter)
    plays = inter.train_plays if inter.train_plays is not None else torch.ones(len(inter.train_user))
    share = torch.zeros(inter.n_users, inter.n_artists)
    share.index_put_((inter.train_user.long(), inter.song_artist[inter.train_song.long()]),
                     plays.float(), accumulate=True)
    share = share / share.sum(dim=1, keepdim=True).clamp(min=1e-12)
    tie_break = 1e-6 * pop / pop.max().clamp(min=1.0)
    song_artist = inter.song_artist.long()
    return lambda users: share[users][:, song_artist] * pop + tie_break


def artist_popularity_baseline(inter: Interactions, split: str = "test",
                               ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """:func:`artist_share_scores` evaluated on ``split``."""
    return ranking_metrics(artist_share_scores(inter), inter, split, ks)


def _normalised_adjacency(inter: Interactions) -> torch.Tensor:
    """Symmetric D^-1/2 A D^-1/2 of the user-song training graph (songs offset by n_users),
    as a sparse CSR tensor; computed once instead of in every LGConv call."""
    u = inter.train_user.long()
    s = inter.train_song.long() + inter.n_users
    n = inter.n_users + inter.n_songs
    row, col = torch.cat([u, s]), torch.cat([s, u])
    deg = torch.bincount(row, minlength=n).float()
    inv_sqrt = deg.pow(-0.5).masked_fill(deg == 0, 0.0)
    value = inv_sqrt[row] * inv_sqrt[col]
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; it is fine here
        warnings.simplefilter("ignore", UserWarning)
        adj = torch.sparse_coo_tensor(torch.stack([row, col]), value, (n, n),
                                      check_invariants=False).coalesce()
        return adj.to_sparse_csr()


def lightgcn_baseline(inter: Interactions, split: str = "test", embedding_dim: int = 64,
                      num_layers: int = 3, epochs: int = 200, lr: float = 0.01,
                      seed: int = 0, batch_size: int = 2048, lambda_reg: float = 1e-3,
                      eval_every: int = 5, patience: int = 8, sampling: str = "user",
                      ks: Sequence[int] = (10, 20), num_threads: Optional[int] = 1,
                      verbose: bool = False, device: str = "cpu") -> dict[str, float]:
    """Train ``torch_geometric.nn.LightGCN`` with BPR and return ``split`` metrics of the
    best model by validation recall@max(ks) (recall@20 by default). Early stopping: evaluated
    every ``eval_every`` epochs, stops after ``patience`` evaluations without improvement;
    the best weights are restored before the final evaluation.

    Negatives are true negatives (:func:`sample_negatives`). An epoch is len(train) samples;
    ``sampling="user"`` draws users uniformly then one of their songs (LightGCN's own code),
    ``"edge"`` visits every training edge once. One full propagation per batch.

    Defaults, chosen by a small sweep on the default synthetic data (temporal split, selected
    on validation recall@20; 64-d and 3 layers fixed as in the spec): Adam lr 1e-2, batch
    2048, L2 1e-3 on the batch's layer-0 embeddings (PyG's BPRLoss form: summed squares /
    batch size), up to 200 epochs. Sweep (val recall@20): on an earlier generator version
    L2 1e-4 / 1e-3 / 1e-2 gave 0.127 / 0.146 / 0.104 (lr 1e-2) and lr 5e-3..2e-2 moved it by
    < 0.01; on the current data lr 1e-2, L2 1e-3 gives 0.137 with user sampling and 0.133
    with edge sampling (lr 2e-2, batch 4096: 0.125-0.129 after 60 epochs). For scale, EASE
    (a strong closed-form item-item model) reaches 0.139 on the same split, so this is close
    to what ID-only collaborative filtering gets on this data.

    ``num_threads``: torch intra-op threads while this runs (restored afterwards). 1 by
    default: at this size a second thread gains ~15% on an idle 2-core machine, but when
    the cores are shared (parallel Ray trials, other jobs) OpenMP spin-waiting made an epoch
    30x slower in our measurements. ``None`` leaves the setting alone.

    ``device``: where the propagation and the BPR steps run (the sampling and the data stay
    on the CPU, with the same random draws on every device).

    Extra keys in the result: ``best_epoch``, ``epochs_run``, ``seconds`` and the best
    model's validation metrics prefixed ``val_``. Without validation
    items (split="none") it trains for ``epochs`` and keeps the last model.
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _fit_lightgcn(inter, split, embedding_dim, num_layers, epochs, lr, seed,
                             batch_size, lambda_reg, eval_every, patience, sampling, ks,
                             verbose, torch.device(device))
    finally:
        torch.set_num_threads(previous)


def _fit_lightgcn(inter, split, embedding_dim, num_layers, epochs, lr, seed, batch_size,
                  lambda_reg, eval_every, patience, sampling, ks, verbose, device):
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    adj = _normalised_adjacency(inter).to(device)
    model = LightGCN(inter.n_users + inter.n_songs, embedding_dim, num_layers,
                     normalize=False).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    keys = training_keys(inter)
    draw = _training_sampler(inter, sampling)
    has_val = len(inter.val_user) > 0
    monitor = f"recall@{max(ks)}"

    def score_fn_of(emb):
        users_emb, songs_emb = emb[:inter.n_users], emb[inter.n_users:]
        return lambda users: users_emb[users.to(emb.device)] @ songs_emb.T

    best, best_state, best_epoch, bad, epoch, best_val = -1.0, None, 0, 0, 0, {}
    for epoch in range(1, epochs + 1):
        _train_epoch(model, opt, adj, inter, keys, gen, batch_size, lambda_reg, draw)
        if not has_val or (epoch % eval_every and epoch != epochs):
            continue
        with torch.no_grad():
            val = ranking_metrics(score_fn_of(model.get_embedding(adj)), inter, "val", ks)
        if verbose:
            print(f"epoch {epoch}: val {monitor} {val[monitor]:.4f}")
        if val[monitor] > best:
            best, best_epoch, bad, best_val = val[monitor], epoch, 0, val
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    with torch.no_grad():
        out = ranking_metrics(score_fn_of(model.get_embedding(adj)), inter, split, ks)
    out.update(best_epoch=float(best_epoch if has_val else epoch), epochs_run=float(epoch),
               seconds=time.perf_counter() - start)
    out.update({f"val_{key}": value for key, value in best_val.items()})
    return out


def _training_sampler(inter: Interactions, sampling: str):
    """Returns ``draw(gen) -> (users, positive songs)`` for one epoch of len(train) samples.

    ``"edge"``: every training edge once, shuffled. ``"user"`` (as in the LightGCN paper's
    code): users uniformly, then one of the user's training songs uniformly, so light users
    weigh as much as heavy ones, as they do in the per-user averaged metrics."""
    user, song = inter.train_user.long(), inter.train_song.long()
    n = len(user)
    if sampling == "edge":
        def draw(gen):
            perm = torch.randperm(n, generator=gen)
            return user[perm], song[perm]
        return draw
    if sampling != "user":
        raise ValueError(f"sampling must be 'user' or 'edge', got {sampling!r}")
    order = torch.argsort(user, stable=True)
    songs_by_user = song[order]
    counts = torch.bincount(user, minlength=inter.n_users)
    start = counts.cumsum(0) - counts
    active = torch.nonzero(counts).flatten()

    def draw(gen):
        users = active[torch.randint(len(active), (n,), generator=gen)]
        offset = (torch.rand(n, generator=gen) * counts[users]).long()
        return users, songs_by_user[start[users] + offset]
    return draw


def _train_epoch(model, opt, adj, inter, keys, gen, batch_size, lambda_reg, draw):
    """One epoch of BPR steps; one full propagation per batch."""
    model.train()
    all_users, all_pos = draw(gen)
    for users, pos in zip(torch.split(all_users, batch_size), torch.split(all_pos, batch_size)):
        neg = sample_negatives(users, keys, inter.n_songs, gen)
        users, pos, neg = (t.to(adj.device) for t in (users, pos, neg))
        emb = model.get_embedding(adj)
        u_emb = emb[users]
        pos_rank = (u_emb * emb[pos + inter.n_users]).sum(-1)
        neg_rank = (u_emb * emb[neg + inter.n_users]).sum(-1)
        node_id = torch.cat([users, pos + inter.n_users, neg + inter.n_users])
        loss = model.recommendation_loss(pos_rank, neg_rank, node_id=node_id,
                                         lambda_reg=lambda_reg)
        opt.zero_grad()
        loss.backward()
        opt.step()
