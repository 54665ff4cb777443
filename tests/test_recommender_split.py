"""The split's edges of time: no future events in the training attributes, the refit protocol,
degenerate events files (all timestamps equal, a single user), data_dir resolution."""
import os

import numpy as np
import pandas as pd
import pytest
import torch

from trainers.recommender.config import GatAdvancedConfig
from trainers.recommender.data import artist_following, build_interactions

DAY = 86_400


def _events(rows):
    return pd.DataFrame(rows, columns=["user_id", "track_id", "artist_id", "timestamp", "ms_played",
                                       "duration_ms"])


def _history():
    """Two users, four songs each (first listens on days 1-4): 25% validation and 25% test hold
    out the third and fourth song, so the training period ends at the first listen of song 3."""
    rows = []
    for user, songs in ((0, (10, 11, 12, 13)), (1, (11, 14, 10, 15))):
        for day, song in enumerate(songs, start=1):
            rows.append((user, song, song % 3, day * DAY, 30_000, 200_000))  # a skip each
    return rows


def _train_view(inter):
    pairs = [(int(u), int(s)) for u, s in zip(inter.user_ids[inter.train_user], inter.song_ids[inter.train_song])]
    edge_index, attributes = artist_following(inter)
    return pairs, inter.train_plays.tolist(), inter.train_attr.tolist(), edge_index.tolist(), attributes.tolist()


@pytest.mark.parametrize("refit", [False, True])
def test_events_after_the_first_held_out_listen_do_not_reach_training_attributes(refit):
    base = _events(_history())
    inter = build_interactions(base, val_frac=0.25, test_frac=0.25, refit=refit)
    # user 0 replays training song 10 in full, many times, after the training period ended
    # (days 5-8; in the refit protocol that period ends at the first test listen, day 4)
    late = _events([(0, 10, 1, (5 + i) * DAY, 200_000, 200_000) for i in range(4)])
    planted = build_interactions(pd.concat([base, late]), val_frac=0.25, test_frac=0.25, refit=refit)
    assert _train_view(planted) == _train_view(inter)
    assert planted.train_plays.min() == 1.0
    # a test that can fail: the same plays inside the training period (day 1.5) do count
    early = _events([(0, 10, 1, DAY + DAY // 2 + i, 200_000, 200_000) for i in range(4)])
    counted = build_interactions(pd.concat([base, early]), val_frac=0.25, test_frac=0.25, refit=refit)
    row = [p for p, _, _, _, _ in [_train_view(counted)]][0].index((0, 10))
    assert counted.train_plays[row] == 5.0
    assert _train_view(counted)[3:] != _train_view(inter)[3:]  # the artist shares moved too


def test_refit_protocol_moves_validation_into_training_and_masks_it_at_test():
    from trainers.recommender.metrics import ranking_metrics

    base = _events(_history())
    select = build_interactions(base, val_frac=0.25, test_frac=0.25)
    refit = build_interactions(base, val_frac=0.25, test_frac=0.25, refit=True)
    assert len(select.val_user) == 2 and len(refit.val_user) == 0
    assert torch.equal(refit.test_user, select.test_user) and torch.equal(refit.test_song, select.test_song)
    train = set(zip(refit.train_user.tolist(), refit.train_song.tolist()))
    val = set(zip(select.val_user.tolist(), select.val_song.tolist()))
    assert val <= train and len(train) == len(select.train_user) + len(val)
    # in protocol (a) validation items are not training items, and test masks them
    assert not val & set(zip(select.train_user.tolist(), select.train_song.tolist()))
    # a scorer that loves the validation songs: masked at test, so it scores the same as one that does not
    val_song = select.val_song.tolist()

    def loves_validation(users):
        scores = torch.zeros(len(users), select.n_songs)
        scores[:, val_song] = 10.0
        return scores
    assert ranking_metrics(loves_validation, select, "test", ks=(1,))["recall@1"] == \
        ranking_metrics(lambda u: torch.zeros(len(u), select.n_songs), select, "test", ks=(1,))["recall@1"]


def test_all_equal_timestamps_split_deterministically():
    rng = np.random.default_rng(0)
    rows = [(u, s, s % 4, 1_700_000_000, 100_000, 200_000) for u in range(5) for s in rng.choice(40, 10, replace=False)]
    events = _events(rows)
    first = build_interactions(events)
    shuffled = build_interactions(events.sample(frac=1.0, random_state=3))
    for name in ("train_user", "train_song", "val_user", "val_song", "test_user", "test_song"):
        assert torch.equal(getattr(first, name), getattr(shuffled, name)), name
    # ties on time fall back to the song index: each user's highest songs are held out
    for user in range(5):
        songs = sorted(first.song_ids[s] for s in first.train_song[first.train_user == user].tolist())
        held = first.song_ids[first.test_song[first.test_user == user]].tolist()
        assert min(held) > max(songs)
    assert first.train_plays.tolist() == [1.0] * len(first.train_user)


def test_single_user_events_train_and_evaluate(tmp_path):
    from trainers.context import LocalContext
    from trainers.recommender.trainers import create_trainer

    rows = [(7, song, song % 3, 1_700_000_000 + 60 * song, 100_000, 200_000) for song in range(20)]
    path = tmp_path / "one.csv"
    _events(rows).to_csv(path, index=False)
    trainer = create_trainer("advanced", {"events": str(path), "max_iterations": 2, "embedding_dim": 8,
                                          "heads": 1, "eval_ks": [5], "metric": "val_recall@5"},
                             LocalContext("gat-advanced", tmp_path / "run", resume=False))
    result = trainer.fit()
    assert trainer.data.n_users == 1 and len(trainer.data.test_user) == 3
    assert 0.0 <= result.final_metrics["test_recall@5"] <= 1.0


def test_relative_data_dir_and_events_resolve_against_the_starting_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = GatAdvancedConfig(data_dir="cache", events="data/events.csv")
    assert config.data_dir == str(tmp_path / "cache") and config.events == str(tmp_path / "data" / "events.csv")
    # a worker rebuilds the config from the driver's dump in another directory: the path holds
    elsewhere = tmp_path / "ray_session"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert GatAdvancedConfig(**config.model_dump()).data_dir == str(tmp_path / "cache")
    assert os.path.isabs(GatAdvancedConfig().data_dir)


def test_refit_config_trains_a_fixed_count_without_validation():
    config = GatAdvancedConfig(refit=True, max_iterations=7)
    assert (config.metric, config.mode, config.patience, config.schedule) == ("iterations_trained", "max", 0, "none")
    assert GatAdvancedConfig(**config.model_dump()).metric == "iterations_trained"  # a worker's copy agrees
    assert GatAdvancedConfig().metric == "val_recall@20" and GatAdvancedConfig().item_prior == "blend"
