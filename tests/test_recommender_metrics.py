"""Tests for trainers.recommender.metrics (and a smoke test of the baselines)."""

import math

import pytest
import torch

from trainers.recommender.baselines import (
    artist_popularity_baseline, lightgcn_baseline, popularity_baseline)
from trainers.recommender.data import Interactions, build_interactions
from trainers.recommender.synthetic import generate_listening_data
from trainers.recommender.metrics import (
    popularity_percentile, ranking_metrics, recall_ndcg_at_k)

L = torch.long


def test_recall_ndcg_hand_computed():
    top = torch.tensor([[3, 1, 4, 0, 2],
                        [2, 0, 1, 3, 4],
                        [0, 1, 2, 3, 4]])
    relevant = [{1, 2}, {2}, {3, 4, 0, 1}]
    recall, ndcg = recall_ndcg_at_k(top, relevant, k=3)
    # user 0: one hit (item 1) at rank 2 of 2 relevant:
    #   recall 1/2; DCG = 1/log2(3) = 0.6309298; IDCG = 1 + 0.6309298 -> NDCG 0.3868528
    # user 1: hit at rank 1, one relevant -> recall 1, NDCG 1
    # user 2: hits at ranks 1, 2 of 4 relevant: recall 2/4; DCG = 1.6309298,
    #   IDCG over min(3, 4) = 3 positions = 1 + 0.6309298 + 0.5 = 2.1309298 -> 0.7653607
    assert recall.tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert ndcg.tolist() == pytest.approx([0.3868528, 1.0, 0.7653607], abs=1e-6)
    dense = torch.zeros(3, 5, dtype=torch.bool)
    for row, items in enumerate(relevant):
        dense[row, list(items)] = True
    r2, n2 = recall_ndcg_at_k(top, dense, k=3)
    assert torch.allclose(r2, recall) and torch.allclose(n2, ndcg)
    # k=1: only user 1 and user 2 hit at rank 1; recall divides by ALL held-out items
    r1, n1 = recall_ndcg_at_k(top, relevant, k=1)
    assert r1.tolist() == pytest.approx([0.0, 1.0, 0.25])
    assert n1.tolist() == pytest.approx([0.0, 1.0, 1.0])


def _hand_interactions():
    """3 users, 6 songs. train: u0 {0,1}, u1 {2}, u2 {0}; val: u0 {2}, u1 {3};
    test: u0 {3}, u2 {5}."""
    def t(*v):
        return torch.tensor(v, dtype=L)
    return Interactions(
        n_users=3, n_songs=6, n_artists=2, song_artist=t(0, 0, 0, 1, 1, 1),
        train_user=t(0, 0, 1, 2), train_song=t(0, 1, 2, 0), train_attr=torch.zeros(4, 2),
        val_user=t(0, 1), val_song=t(2, 3), test_user=t(0, 2), test_song=t(3, 5),
        train_plays=torch.ones(4))


# Same scores for every user: song 0 best, song 5 worst.
def _fixed_scores(users):
    return torch.tensor([6.0, 5, 4, 3, 2, 1]).expand(len(users), -1)


def test_ranking_metrics_test_split_masks_train_and_val():
    inter = _hand_interactions()
    m = ranking_metrics(_fixed_scores, inter, "test", ks=(1, 3))
    # u0: train {0,1} and val {2} masked -> ranking 3,4,5; test {3} at rank 1 -> 1, 1
    # u2: train {0} masked -> ranking 1,2,3; test {5} not in top 3 -> 0, 0
    # u1 has no test item and is not evaluated.
    assert m["n_eval_users"] == 2
    assert m["recall@1"] == pytest.approx(0.5) and m["recall@3"] == pytest.approx(0.5)
    assert m["ndcg@1"] == pytest.approx(0.5) and m["ndcg@3"] == pytest.approx(0.5)
    # top-1 lists: u0 -> 3, u2 -> 1 -> 2 of 6 songs
    assert m["coverage@1"] == pytest.approx(2 / 6)


def test_ranking_metrics_val_split_masks_only_train():
    inter = _hand_interactions()
    m = ranking_metrics(_fixed_scores, inter, "val", ks=(1, 3))
    # u0: train {0,1} masked -> ranking 2,3,4; val {2} at rank 1 (test item 3 NOT masked)
    # u1: train {2} masked -> ranking 0,1,3; val {3} at rank 3: recall@3 1, NDCG 1/log2(4)
    assert m["n_eval_users"] == 2
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["ndcg@3"] == pytest.approx((1.0 + 0.5) / 2)
    # training popularity: song0 2 users, songs 1, 2 one, songs 3-5 none ->
    # percentiles (ties averaged, /5): song0 = 5/5 = 1.0, song2 = (3 + 0.5)/5 = 0.7
    assert popularity_percentile(inter).tolist() == pytest.approx(
        [1.0, 0.7, 0.7, 0.2, 0.2, 0.2])
    # top-1 lists: u0 -> song 2, u1 -> song 0
    assert m["popularity_bias@1"] == pytest.approx((0.7 + 1.0) / 2)
    assert m["coverage@1"] == pytest.approx(2 / 6)


def test_unmasked_scores_would_differ():
    """Guard that the masking is what makes u0 score: a model that ranks the user's own
    training songs first must not be penalised for them."""
    inter = _hand_interactions()
    # If training items were not masked, u0's top 3 would be 0,1,2 (no test hit).
    no_train = Interactions(**{**inter.__dict__, "train_user": torch.zeros(0, dtype=L),
                               "train_song": torch.zeros(0, dtype=L),
                               "val_user": torch.zeros(0, dtype=L),
                               "val_song": torch.zeros(0, dtype=L)})
    assert ranking_metrics(_fixed_scores, no_train, "test", ks=(3,))["recall@3"] == 0.0
    assert ranking_metrics(_fixed_scores, inter, "test", ks=(3,))["recall@3"] == 0.5


def _brute_force(scores, inter, split, k):
    """Per-user python reference: mask, sort, count."""
    train = set(zip(inter.train_user.tolist(), inter.train_song.tolist()))
    val = set(zip(inter.val_user.tolist(), inter.val_song.tolist()))
    held_u, held_s = inter.pairs(split)
    held = {}
    for u, s in zip(held_u.tolist(), held_s.tolist()):
        held.setdefault(u, set()).add(s)
    recalls, ndcgs = [], []
    for u, rel in held.items():
        masked = {s for (uu, s) in train if uu == u}
        if split == "test":
            masked |= {s for (uu, s) in val if uu == u}
        ranked = [s for s in sorted(range(inter.n_songs), key=lambda s: -scores[u, s].item())
                  if s not in masked][:k]
        hits = [1.0 if s in rel else 0.0 for s in ranked]
        recalls.append(sum(hits) / len(rel))
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
        ndcgs.append(dcg / idcg)
    return sum(recalls) / len(recalls), sum(ndcgs) / len(ndcgs), len(held)


@pytest.mark.parametrize("split", ["val", "test"])
def test_ranking_metrics_matches_brute_force_with_chunks(split):
    events = generate_listening_data(n_users=40, n_songs=120, n_artists=15, n_days=7,
                                     n_genres=5, seed=5)["events"]
    inter = build_interactions(events)
    torch.manual_seed(0)
    scores = torch.randn(inter.n_users, inter.n_songs)  # distinct scores: no tie ambiguity
    called = []

    def score_fn(users):
        called.append(users.clone())
        return scores[users]

    m = ranking_metrics(score_fn, inter, split, ks=(5, 10), chunk_size=7)
    expected_users = torch.unique(inter.pairs(split)[0])
    seen = torch.cat(called)
    # every eligible user exactly once, over several chunks
    assert len(called) > 1 and torch.equal(torch.sort(seen).values, expected_users)
    for k in (5, 10):
        recall, ndcg, n = _brute_force(scores, inter, split, k)
        assert m[f"recall@{k}"] == pytest.approx(recall)
        assert m[f"ndcg@{k}"] == pytest.approx(ndcg)
        assert m["n_eval_users"] == n
    assert ranking_metrics(lambda u: scores[u], inter, split, ks=(5, 10),
                           chunk_size=512) == pytest.approx(m)


def test_ranking_metrics_rejects_wrong_shape_and_empty_split():
    inter = _hand_interactions()
    with pytest.raises(ValueError, match="shape"):
        ranking_metrics(lambda u: torch.zeros(len(u), 5), inter, "test")
    empty = Interactions(**{**inter.__dict__, "test_user": torch.zeros(0, dtype=L),
                            "test_song": torch.zeros(0, dtype=L)})
    m = ranking_metrics(_fixed_scores, empty, "test", ks=(1,))
    assert m["n_eval_users"] == 0 and math.isnan(m["recall@1"])


def test_heuristic_baselines_ordering():
    inter = build_interactions(generate_listening_data()["events"])  # defaults, ~0.2 s
    pop = popularity_baseline(inter, "test")
    art = artist_popularity_baseline(inter, "test")
    assert set(pop) >= {"recall@10", "ndcg@10", "recall@20", "ndcg@20", "coverage@10",
                        "popularity_bias@10"}
    # the taste structure is real: knowing the user's artists beats global popularity
    assert art["recall@20"] > 1.5 * pop["recall@20"]
    assert pop["popularity_bias@10"] > art["popularity_bias@10"]


def test_lightgcn_baseline_smoke():
    events = generate_listening_data(n_users=150, n_songs=600, n_artists=60, n_days=14,
                                     seed=1)["events"]
    inter = build_interactions(events)
    m = lightgcn_baseline(inter, "test", epochs=6, eval_every=2, embedding_dim=16)
    assert m["n_eval_users"] == len(torch.unique(inter.test_user))
    assert 0.0 <= m["recall@20"] <= 1.0 and m["best_epoch"] in (2.0, 4.0, 6.0)
    assert m["epochs_run"] == 6.0
