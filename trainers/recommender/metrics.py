"""All-item ranking metrics for the recommender (plain PyTorch).

Protocol (as in LightGCN, He et al. 2020): every user with at least one held-out item in the
split is evaluated against the whole catalogue; items the user already interacted with in
training (and, for the test split, in validation) are masked to -inf first.

* Recall@K = |top-K ∩ held-out| / |held-out|  (not / min(K, |held-out|)).
* NDCG@K   = DCG / IDCG with binary relevance, DCG = Σ_{rank r<K, hit} 1 / log2(r + 2) and
  IDCG over the min(K, |held-out|) best possible positions.
* coverage@K = distinct songs in anyone's top K / n_songs.
* popularity_bias@K = mean training-popularity percentile (0 = least, 1 = most popular song,
  ties share their average rank) of all recommended songs.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence, Union

import torch

Relevance = Union[torch.Tensor, Sequence[Iterable[int]]]


def recall_ndcg_at_k(topk_indices: torch.Tensor, relevant: Relevance,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-user Recall@k and NDCG@k.

    ``topk_indices``: LongTensor[B, >=k], items ranked best first. ``relevant``: a bool/0-1
    tensor [B, n_items] or a list of B collections of relevant item ids. Returns two
    FloatTensor[B]; users without relevant items get 0 for both (callers should not pass
    them; :func:`ranking_metrics` never does)."""
    top = topk_indices[:, :k].long()
    if isinstance(relevant, torch.Tensor):
        dense = relevant.bool()
    else:
        dense = _dense_relevance(relevant, top)
    hits = dense.gather(1, top).float()  # [B, k]
    n_rel = dense.sum(dim=1).float()
    discount = 1.0 / torch.log2(torch.arange(top.shape[1], dtype=torch.float32) + 2.0)
    dcg = (hits * discount).sum(dim=1)
    ideal_len = torch.clamp(n_rel, max=top.shape[1]).long()
    idcg = torch.cat([torch.zeros(1), discount.cumsum(0)])[ideal_len]
    recall = torch.where(n_rel > 0, hits.sum(dim=1) / n_rel.clamp(min=1), torch.zeros(()))
    ndcg = torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12), torch.zeros(()))
    return recall, ndcg


def _dense_relevance(relevant: Sequence[Iterable[int]], top: torch.Tensor) -> torch.Tensor:
    sets = [list(r) for r in relevant]
    width = max([int(top.max()) + 1 if top.numel() else 0]
                + [max(s) + 1 for s in sets if s])
    dense = torch.zeros(len(sets), width, dtype=torch.bool)
    for row, items in enumerate(sets):  # small inputs only (tests, hand examples)
        dense[row, list(items)] = True
    return dense


class _UserItems:
    """CSR view (by user) of (user, item) pairs, for fast per-chunk lookups."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_users: int):
        order = torch.argsort(users.long(), stable=True)
        self.items = items.long()[order]
        counts = torch.bincount(users.long(), minlength=n_users)
        self.ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    def rows_cols(self, chunk_users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row position in chunk, item) of every pair of the chunk's users."""
        start, end = self.ptr[chunk_users], self.ptr[chunk_users + 1]
        counts = end - start
        rows = torch.repeat_interleave(torch.arange(len(chunk_users)), counts)
        offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(
            counts.cumsum(0) - counts, counts)
        return rows, self.items[start[rows] + offsets]


def popularity_percentile(inter) -> torch.Tensor:
    """Training popularity (number of training users) of each song as a percentile 0..1."""
    pop = torch.bincount(inter.train_song.long(), minlength=inter.n_songs).double()
    if inter.n_songs < 2:
        return torch.zeros(inter.n_songs)
    # Average rank of ties: (#smaller + (#equal - 1) / 2) / (n - 1).
    sorted_pop, _ = torch.sort(pop)
    smaller = torch.searchsorted(sorted_pop, pop, right=False)
    equal = torch.searchsorted(sorted_pop, pop, right=True) - smaller
    return ((smaller + (equal - 1) / 2.0) / (inter.n_songs - 1)).float()


def eligible_users(inter, split: str) -> torch.Tensor:
    """Sorted users with at least one item in ``split``."""
    users, _ = inter.pairs(split)
    return torch.unique(users.long())


def ranking_metrics(score_fn: Callable[[torch.Tensor], torch.Tensor], inter,
                    split: str = "val", ks: Sequence[int] = (10, 20),
                    chunk_size: int = 512) -> dict[str, float]:
    """Evaluate ``score_fn(users) -> FloatTensor[len(users), n_songs]`` on ``split``.

    ``users`` is a CPU LongTensor of user indices (at most ``chunk_size``); the scores may be
    on any device (masking and top-k run there). ``inter`` stays on the CPU.

    Returns ``recall@K`` and ``ndcg@K`` for every K in ``ks``, ``coverage@K`` and
    ``popularity_bias@K`` for the smallest K, and ``n_eval_users`` (as a float). With no
    eligible user every metric is NaN."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    ks = sorted({int(k) for k in ks})
    k_cov = ks[0]
    users = eligible_users(inter, split)
    if len(users) == 0:
        out = {f"{m}@{k}": math.nan for k in ks for m in ("recall", "ndcg")}
        out.update({f"coverage@{k_cov}": math.nan, f"popularity_bias@{k_cov}": math.nan,
                    "n_eval_users": 0.0})
        return out

    seen = [_UserItems(inter.train_user, inter.train_song, inter.n_users)]
    if split == "test":  # validation items are known at test time, so they are masked too
        seen.append(_UserItems(inter.val_user, inter.val_song, inter.n_users))
    held = _UserItems(*inter.pairs(split), inter.n_users)
    percentile = popularity_percentile(inter)

    sums = {k: [0.0, 0.0] for k in ks}
    covered = torch.zeros(inter.n_songs, dtype=torch.bool)
    pop_sum, pop_count = 0.0, 0
    for chunk in torch.split(users, chunk_size):
        top = _masked_topk(score_fn, chunk, seen, inter.n_songs, min(ks[-1], inter.n_songs))
        rows, cols = held.rows_cols(chunk)
        relevant = torch.zeros(len(chunk), inter.n_songs, dtype=torch.bool)
        relevant[rows, cols] = True
        for k in ks:
            recall, ndcg = recall_ndcg_at_k(top, relevant, k)
            sums[k][0] += float(recall.sum())
            sums[k][1] += float(ndcg.sum())
        shown = top[:, :k_cov]
        covered[shown.reshape(-1)] = True
        pop_sum += float(percentile[shown].sum())
        pop_count += shown.numel()

    n = len(users)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = sums[k][0] / n
        out[f"ndcg@{k}"] = sums[k][1] / n
    out[f"coverage@{k_cov}"] = float(covered.sum()) / inter.n_songs
    out[f"popularity_bias@{k_cov}"] = pop_sum / max(pop_count, 1)
    out["n_eval_users"] = float(n)
    return out


def _masked_topk(score_fn, chunk, seen, n_songs, k):
    with torch.no_grad():
        scores = score_fn(chunk)
    if tuple(scores.shape) != (len(chunk), n_songs):
        raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, "
                         f"expected ({len(chunk)}, {n_songs})")
    scores = scores.detach().float()
    pairs = [items.rows_cols(chunk) for items in seen]
    rows = torch.cat([r for r, _ in pairs]).to(scores.device)
    cols = torch.cat([c for _, c in pairs]).to(scores.device)
    # Out-of-place: score_fn may hand back a view of model state (or an expanded row).
    scores = scores.index_put((rows, cols), torch.tensor(float("-inf"), device=scores.device))
    return torch.topk(scores, k, dim=1).indices.cpu()
