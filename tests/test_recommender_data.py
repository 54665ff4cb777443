"""Tests for the recommender's data: generator, files, loading, split, graph, negatives."""

import threading

import numpy as np
import pandas as pd
import pytest
import torch

from trainers.recommender.data import (
    Interactions, aggregate_edges, build_graph, build_interactions, index_maps, sample_negatives, training_keys)
from trainers.recommender.events import load_events
from trainers.recommender.synthetic import ensure_synthetic_dataset, generate_listening_data, write_dataset

SMALL = dict(n_users=60, n_songs=300, n_artists=40, n_days=10, n_genres=8)


@pytest.fixture(scope="module")
def tables():
    return generate_listening_data()  # defaults, ~0.1 s


@pytest.fixture(scope="module")
def inter(tables):
    return build_interactions(tables["events"])


# ------------------------------------------------------------------------------ generator
def test_generator_shapes_and_ranges(tables):
    assert set(tables) == {"events", "songs", "artists", "users"}
    ev = tables["events"]
    assert list(ev.columns) == ["user_id", "track_id", "artist_id", "timestamp",
                                "ms_played", "duration_ms"]
    assert 50_000 <= len(ev) <= 150_000
    assert ev["user_id"].between(0, 999).all() and ev["track_id"].between(0, 4999).all()
    assert ev["artist_id"].between(0, 499).all()
    assert (ev["ms_played"] >= 0).all() and (ev["ms_played"] <= ev["duration_ms"]).all()
    start = 1_704_067_200
    assert ev["timestamp"].min() >= start
    assert ev["timestamp"].max() < start + 31 * 86_400  # last sessions may run past midnight
    assert ev["timestamp"].is_monotonic_increasing
    # events agree with the song table
    songs = tables["songs"].set_index("track_id")
    assert (songs.loc[ev["track_id"], "artist_id"].to_numpy() == ev["artist_id"]).all()
    assert (songs.loc[ev["track_id"], "duration_ms"].to_numpy() == ev["duration_ms"]).all()
    assert len(tables["users"]) == 1000 and len(tables["artists"]) == 500


def test_user_types_and_activity(tables):
    users, ev = tables["users"], tables["events"]
    share = users["user_type"].value_counts(normalize=True)
    assert abs(share["casual"] - 0.50) < 0.05
    assert abs(share["regular"] - 0.35) < 0.05
    assert abs(share["power"] - 0.15) < 0.04
    plays = ev.groupby("user_id").size().reindex(users["user_id"], fill_value=0)
    by_type = plays.groupby(users.set_index("user_id")["user_type"]).median()
    assert by_type["casual"] < by_type["regular"] < by_type["power"]
    n_pref = users["preferred_artists"].map(len)
    assert n_pref.between(3, 10).all() and n_pref.nunique() > 5


def test_play_behaviour_shares(tables):
    ev = tables["events"]
    skip = (ev["ms_played"] < 30_000).mean()
    full = (ev["ms_played"] == ev["duration_ms"]).mean()
    assert abs(skip - 0.20) < 0.03
    assert abs(full - 0.40) < 0.03
    assert abs((1 - skip - full) - 0.40) < 0.04


def test_taste_structure(tables):
    ev, users, artists = tables["events"], tables["users"], tables["artists"]
    pref = users.set_index("user_id")["preferred_artists"].map(set)
    on_pref = np.mean([a in pref[u] for u, a in zip(ev["user_id"], ev["artist_id"])])
    assert on_pref > 0.6
    fav = users.set_index("user_id")["favourite_genres"].map(set)
    a_genres = artists.set_index("artist_id")["genres"].map(set)
    liked = np.mean([bool(a_genres[a] & fav[u]) for u, a in zip(ev["user_id"],
                                                                  ev["artist_id"])])
    assert liked > 0.6
    # Skewed popularity inside artists: the 10% best songs of an artist with >= 20 songs
    # take far more than 10% of its plays.
    per_artist = tables["songs"].groupby("artist_id").size()
    big = per_artist[per_artist >= 20].index
    counts = ev[ev["artist_id"].isin(big)].groupby(["artist_id", "track_id"]).size()
    top_share = counts.groupby(level=0).apply(
        lambda c: c.nlargest(max(1, per_artist[c.name] // 10)).sum() / c.sum())
    assert len(big) > 10 and top_share.median() > 0.25


def test_late_discovered_artists_are_played_after_discovery(tables):
    users, ev = tables["users"], tables["events"]
    slots = users[["user_id", "preferred_artists", "preferred_since_day"]].explode(
        ["preferred_artists", "preferred_since_day"])
    slots = slots.rename(columns={"preferred_artists": "artist_id",
                                  "preferred_since_day": "since"}).astype(float)
    late = slots[slots["since"].between(10, 20)]
    plays = ev.merge(late, on=["user_id", "artist_id"])
    day = (plays["timestamp"] - 1_704_067_200) / 86_400
    before = (day < plays["since"]).sum() / late["since"].sum()  # plays per artist-day
    after = (day >= plays["since"]).sum() / (30 - late["since"]).sum()
    assert len(late) > 100 and after > 3 * before


def test_same_artist_runs(tables):
    ev = tables["events"].sort_values(["user_id", "timestamp"], kind="stable")
    same_user = ev["user_id"].to_numpy()[1:] == ev["user_id"].to_numpy()[:-1]
    gap = np.diff(ev["timestamp"].to_numpy())
    in_session = same_user & (gap <= 700)
    same_artist = ev["artist_id"].to_numpy()[1:] == ev["artist_id"].to_numpy()[:-1]
    assert same_artist[in_session].mean() > 0.4


def test_generator_deterministic_and_seeded():
    a = generate_listening_data(**SMALL, seed=3)
    b = generate_listening_data(**SMALL, seed=3)
    c = generate_listening_data(**SMALL, seed=4)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["events"].equals(c["events"])


def test_generator_tiny_catalogue_fewer_songs_than_artists():
    t = generate_listening_data(n_users=15, n_songs=20, n_artists=50, n_days=3, n_genres=4)
    ev = t["events"]
    assert len(ev) > 0 and ev["track_id"].between(0, 19).all()
    songs = t["songs"].set_index("track_id")
    assert (songs.loc[ev["track_id"], "artist_id"].to_numpy() == ev["artist_id"]).all()


# ------------------------------------------------------------------------------ files
def test_parquet_round_trip(tmp_path):
    tables = generate_listening_data(**SMALL)
    out = write_dataset(tables, tmp_path / "ds")
    assert sorted(p.name for p in out.iterdir()) == [
        "artists.parquet", "events.parquet", "songs.parquet", "users.parquet"]
    loaded = load_events(out / "events.parquet")
    pd.testing.assert_frame_equal(loaded, tables["events"])
    users = pd.read_parquet(out / "users.parquet")
    assert users["preferred_artists"].map(list).tolist() == \
        tables["users"]["preferred_artists"].tolist()


def test_ensure_synthetic_dataset_caches_and_is_race_safe(tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        ensure_synthetic_dataset(tmp_path, **SMALL))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    path = results[0]
    assert path.name == "events.parquet" and path.parent.name.startswith("synthetic-")
    # only the final dataset directory is left behind, complete
    assert [p.name for p in tmp_path.iterdir()] == [path.parent.name]
    assert len(list(path.parent.iterdir())) == 4
    mtime = path.stat().st_mtime_ns
    assert ensure_synthetic_dataset(tmp_path, **SMALL) == path
    assert path.stat().st_mtime_ns == mtime  # cached, not regenerated
    other = ensure_synthetic_dataset(tmp_path, **{**SMALL, "seed": 1})
    assert other.parent != path.parent
    pd.testing.assert_frame_equal(load_events(path),
                                  generate_listening_data(**SMALL)["events"])


# ------------------------------------------------------------------------------ load_events
def _events_csv(tmp_path, frame, name="ev.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_load_events_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        load_events(tmp_path / "nope.parquet")


def test_load_events_missing_columns_named(tmp_path):
    frame = pd.DataFrame({"user_id": [1], "track_id": [2], "artist_id": [3]})
    path = _events_csv(tmp_path, frame)
    with pytest.raises(ValueError) as err:
        load_events(path)
    msg = str(err.value)
    assert "ev.csv" in msg and "timestamp" in msg and "ms_played" in msg
    assert "user_id" not in msg and "track_id" not in msg and "\n" not in msg


def test_load_events_wrong_suffix(tmp_path):
    path = tmp_path / "events.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match=r"\.json"):
        load_events(path)


def test_load_events_unparsable_and_empty(tmp_path):
    bad = tmp_path / "events.parquet"
    bad.write_bytes(b"this is not parquet at all")
    with pytest.raises(ValueError, match="could not parse") as err:
        load_events(bad)
    assert "events.parquet" in str(err.value) and "\n" not in str(err.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_events(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("user_id,track_id,artist_id,timestamp,ms_played\n")
    with pytest.raises(ValueError, match="empty"):
        load_events(header_only)
    bad_ts = _events_csv(tmp_path, pd.DataFrame({
        "user_id": ["a"], "track_id": ["t"], "artist_id": ["x"], "timestamp": ["not a date"],
        "ms_played": [1000]}), "badts.csv")
    with pytest.raises(ValueError, match="timestamp"):
        load_events(bad_ts)


def test_load_events_csv_dates_and_no_duration(tmp_path):
    frame = pd.DataFrame({
        "user_id": ["bob", "bob", "amy", "amy"], "track_id": ["t2", "t2", "t2", "t1"],
        "artist_id": ["x", "x", "x", "y"],
        "timestamp": ["2024-01-01 00:00:00", "2024-01-01 00:01:40", "2024-01-02 00:00:00",
                      "2024-01-01 12:00:00"],
        "ms_played": [100_000, 200_000, 50_000, 30_000]})
    ev = load_events(_events_csv(tmp_path, frame))
    assert ev["timestamp"].tolist() == [1_704_067_200, 1_704_067_300, 1_704_153_600,
                                        1_704_110_400]
    edges = aggregate_edges(ev)
    # ids sorted -> amy=0, bob=1; t1=0, t2=1; x=0, y=1
    row = edges.set_index(["user", "song"])
    assert row.loc[(1, 1), "plays"] == 2
    # no duration_ms: per-track longest play (200 s for t2) stands in
    assert row.loc[(1, 1), "completion"] == pytest.approx((0.5 + 1.0) / 2)
    assert row.loc[(0, 1), "completion"] == pytest.approx(0.25)
    assert row.loc[(0, 0), "completion"] == pytest.approx(1.0)
    assert (row.loc[(1, 1), "first_ts"], row.loc[(1, 1), "last_ts"]) == (1_704_067_200,
                                                                          1_704_067_300)
    maps = index_maps(edges)
    assert maps.song_artist.tolist() == [1, 0]
    assert maps.user_ids.tolist() == ["amy", "bob"] and maps.song_ids.tolist() == ["t1", "t2"]
    # the same maps are rebuilt from the columns when pandas dropped attrs
    edges.attrs.clear()
    rebuilt = index_maps(edges)
    assert rebuilt.song_artist.tolist() == [1, 0] and rebuilt.artist_ids.tolist() == ["x", "y"]
    assert row.loc[(1, 1), "weight"] == pytest.approx(np.log1p(2) * 0.75)


# ------------------------------------------------------------------------------ split
def _pairs(u, s):
    return set(zip(u.tolist(), s.tolist()))


def test_split_disjoint_and_complete(tables, inter):
    train = _pairs(inter.train_user, inter.train_song)
    val = _pairs(inter.val_user, inter.val_song)
    test = _pairs(inter.test_user, inter.test_song)
    assert not (train & val) and not (train & test) and not (val & test)
    edges = aggregate_edges(tables["events"])
    assert len(train) + len(val) + len(test) == len(edges)
    assert 0.13 < len(test) / len(edges) < 0.19 and 0.13 < len(val) / len(edges) < 0.19
    assert inter.train_attr.shape == (len(train), 2)
    assert inter.train_attr.mean(0).abs().max() < 1e-4  # standardised


def test_split_is_temporal_per_user(tables, inter):
    edges = aggregate_edges(tables["events"]).set_index(["user", "song"])["first_ts"]

    def first_ts(u, s):
        return pd.Series(edges.loc[list(zip(u.tolist(), s.tolist()))].to_numpy(),
                         index=u.numpy())

    tr = first_ts(inter.train_user, inter.train_song).groupby(level=0).max()
    va = first_ts(inter.val_user, inter.val_song).groupby(level=0)
    te = first_ts(inter.test_user, inter.test_song).groupby(level=0).min()
    users = te.index
    assert (te[users] >= va.max()[users]).all()
    assert (va.min()[users] >= tr[users]).all()
    # every user with >= 3 songs has train, val and test items; smaller users only train
    n = pd.Series(1, index=edges.index).groupby(level=0).sum()
    assert set(users) == set(n[n >= 3].index)
    assert set(tr.index) == set(n.index)


def test_split_counts_small_users():
    rows = []
    for user, n_songs in enumerate([1, 2, 3, 4, 10]):
        for s in range(n_songs):
            rows.append((user, s, 100, 1000 + s, 10, 10))
    ev = pd.DataFrame(rows, columns=["user_id", "track_id", "artist_id", "timestamp",
                                     "ms_played", "duration_ms"])
    inter = build_interactions(ev)
    counts = {name: np.bincount(getattr(inter, f"{name}_user").numpy(), minlength=5).tolist()
              for name in ("train", "val", "test")}
    assert counts == {"train": [1, 2, 1, 2, 6], "val": [0, 0, 1, 1, 2],
                      "test": [0, 0, 1, 1, 2]}
    # the latest songs are the test ones
    assert sorted(inter.test_song[inter.test_user == 4].tolist()) == [8, 9]
    assert sorted(inter.val_song[inter.val_user == 4].tolist()) == [6, 7]


def test_split_none_puts_everything_in_train(tables):
    inter = build_interactions(tables["events"], split="none")
    assert len(inter.val_user) == 0 and len(inter.test_user) == 0
    assert len(inter.train_user) == len(aggregate_edges(tables["events"]))


def test_graph_uses_training_edges_only(inter):
    g = build_graph(inter)
    assert (g["user"].num_nodes, g["song"].num_nodes, g["artist"].num_nodes) == (
        inter.n_users, inter.n_songs, inter.n_artists)
    ei = g["user", "listens", "song"].edge_index
    graph_pairs = _pairs(ei[0], ei[1])
    assert graph_pairs == _pairs(inter.train_user, inter.train_song)
    assert not graph_pairs & _pairs(inter.test_user, inter.test_song)
    assert not graph_pairs & _pairs(inter.val_user, inter.val_song)
    assert torch.equal(g["song", "rev_listens", "user"].edge_index, ei.flip(0))
    for rel in g.edge_types:
        assert g[rel].edge_attr.shape == (g[rel].edge_index.shape[1], 2)
    by = g["song", "by", "artist"].edge_index
    assert torch.equal(by[1], inter.song_artist) and by[0].tolist() == list(
        range(inter.n_songs))
    assert int(ei[1].max()) < inter.n_songs  # song indices are not offset by n_users


# ------------------------------------------------------------------------------ negatives
def test_training_keys_sorted_unique(inter):
    keys = training_keys(inter)
    assert torch.all(keys[1:] > keys[:-1])
    assert len(keys) == len(inter.train_user)


def test_negatives_are_true_negatives(inter):
    keys = training_keys(inter)
    gen = torch.Generator().manual_seed(0)
    # heaviest users (most collisions) repeated many times
    heavy = torch.bincount(inter.train_user, minlength=inter.n_users).argsort()[-20:]
    users = torch.cat([heavy.repeat(500), torch.arange(inter.n_users)])
    neg = sample_negatives(users, keys, inter.n_songs, gen)
    assert neg.shape == users.shape and int(neg.min()) >= 0
    assert int(neg.max()) < inter.n_songs
    train = _pairs(inter.train_user, inter.train_song)
    assert not _pairs(users, neg) & train
    # roughly uniform over unheard songs: a heavy user gets many distinct negatives
    assert len(set(neg[:500].tolist())) > 400


def _tiny(n_songs, heard):
    user = torch.zeros(len(heard), dtype=torch.long)
    song = torch.tensor(heard, dtype=torch.long)
    empty = torch.zeros(0, dtype=torch.long)
    return Interactions(1, n_songs, 1, torch.zeros(n_songs, dtype=torch.long), user, song,
                        torch.zeros(len(heard), 2), empty, empty, empty, empty)


def test_negatives_single_candidate_and_impossible():
    inter = _tiny(5, [0, 1, 3, 4])
    neg = sample_negatives(torch.zeros(200, dtype=torch.long), training_keys(inter), 5,
                           torch.Generator().manual_seed(1))
    assert neg.tolist() == [2] * 200
    full = _tiny(3, [0, 1, 2])
    with pytest.raises(ValueError):
        sample_negatives(torch.zeros(2, dtype=torch.long), training_keys(full), 3)
