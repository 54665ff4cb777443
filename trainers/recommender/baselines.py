"""Baselines reported beside the GAT model, evaluated with the same protocol
(:func:`trainers.recommender.metrics.ranking_metrics`: all items, seen items masked).

* :func:`popularity_baseline` - most popular songs (weak floor).
* :func:`artist_popularity_baseline` - user's play share of the song's artist x popularity.
* :func:`lightgcn_baseline` - PyG LightGCN with BPR and true negatives (the strong one).
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Optional, Sequence

import torch
from torch_geometric.nn import LightGCN

from .data import Interactions, sample_negatives, training_keys
from .metrics import ranking_metrics


def song_popularity(inter: Interactions) -> torch.Tensor:
    """Number of training users per song (FloatTensor[n_songs])."""
    return torch.bincount(inter.train_song.long(), minlength=inter.n_songs).float()


def popularity_baseline(inter: Interactions, split: str = "test",
                        ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Everyone gets the songs with the most training listeners (minus their own)."""
    pop = song_popularity(inter)
    return ranking_metrics(lambda users: pop.expand(len(users), -1), inter, split, ks)


def artist_popularity_baseline(inter: Interactions, split: str = "test",
                               ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """score(u, s) = share of u's training plays on artist(s) x popularity(s) + a tiny
    popularity term, so songs of artists the user never played are still ordered."""
    pop = song_popularity(inter)
    plays = inter.train_plays if inter.train_plays is not None else torch.ones(
        len(inter.train_user))
    share = torch.zeros(inter.n_users, inter.n_artists)
    share.index_put_((inter.train_user.long(), inter.song_artist[inter.train_song.long()]),
                     plays.float(), accumulate=True)
    share = share / share.sum(dim=1, keepdim=True).clamp(min=1e-12)
    tie_break = 1e-6 * pop / pop.max().clamp(min=1.0)
    song_artist = inter.song_artist.long()

    def score(users: torch.Tensor) -> torch.Tensor:
        return share[users][:, song_artist] * pop + tie_break

    return ranking_metrics(score, inter, split, ks)


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
                      verbose: bool = False) -> dict[str, float]:
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

    Extra keys in the result: ``best_epoch``, ``epochs_run``, ``seconds``. Without validation
    items (split="none") it trains for ``epochs`` and keeps the last model.
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _fit_lightgcn(inter, split, embedding_dim, num_layers, epochs, lr, seed,
                             batch_size, lambda_reg, eval_every, patience, sampling, ks,
                             verbose)
    finally:
        torch.set_num_threads(previous)


def _fit_lightgcn(inter, split, embedding_dim, num_layers, epochs, lr, seed, batch_size,
                  lambda_reg, eval_every, patience, sampling, ks, verbose):
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    adj = _normalised_adjacency(inter)
    model = LightGCN(inter.n_users + inter.n_songs, embedding_dim, num_layers,
                     normalize=False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    keys = training_keys(inter)
    draw = _training_sampler(inter, sampling)
    has_val = len(inter.val_user) > 0
    monitor = f"recall@{max(ks)}"

    def score_fn_of(emb):
        users_emb, songs_emb = emb[:inter.n_users], emb[inter.n_users:]
        return lambda users: users_emb[users] @ songs_emb.T

    best, best_state, best_epoch, bad, epoch = -1.0, None, 0, 0, 0
    for epoch in range(1, epochs + 1):
        _train_epoch(model, opt, adj, inter, keys, gen, batch_size, lambda_reg, draw)
        if not has_val or (epoch % eval_every and epoch != epochs):
            continue
        with torch.no_grad():
            val = ranking_metrics(score_fn_of(model.get_embedding(adj)), inter, "val", ks)
        if verbose:
            print(f"epoch {epoch}: val {monitor} {val[monitor]:.4f}")
        if val[monitor] > best:
            best, best_epoch, bad = val[monitor], epoch, 0
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
