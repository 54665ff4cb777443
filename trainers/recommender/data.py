"""From listening events to what a trainer needs: aggregated edges, the per-user temporal split,
tensors, the heterogeneous graph and negative samples. The pipeline is::

    events = load_events(path)                     # or the synthetic generator's events table
    inter = build_interactions(events)             # tensors + per-user temporal split
    graph = build_graph(inter)                     # HeteroData on TRAIN edges only

User data may use any ids; :func:`aggregate_edges` maps them to contiguous 0-based indices
(``user``, ``song``, ``artist``), sorted by original id. ``timestamp`` is int64 unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData


# --------------------------------------------------------------------------------------------
# Aggregation, split, tensors
# --------------------------------------------------------------------------------------------
def aggregate_edges(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, song) with play statistics.

    Columns: ``user, song, artist`` (contiguous 0-based indices; ids sorted ascending),
    ``user_id, track_id, artist_id`` (original ids), ``plays``, ``completion`` (mean of
    ms_played / duration_ms clipped to [0, 1]; without duration_ms the track's longest
    observed play stands in for its duration), ``first_ts, last_ts`` and
    ``weight = log1p(plays) * completion`` (repeated, finished listens count most; an
    always-skipped song weighs ~0).

    ``edges.attrs["index_maps"]`` holds an :class:`IndexMaps` (original id of each user /
    song / artist index and the artist index of each song). pandas may drop attrs after
    later operations; :func:`index_maps` rebuilds it from the columns then. A track listed
    under several artists is assigned its most frequent one."""
    user, user_ids = pd.factorize(events["user_id"], sort=True)
    song, song_ids = pd.factorize(events["track_id"], sort=True)
    artist, artist_ids = pd.factorize(events["artist_id"], sort=True)
    ratio = _completion_ratio(events, song)
    frame = pd.DataFrame({"user": user, "song": song, "artist": artist,
                          "timestamp": events["timestamp"].to_numpy(np.int64),
                          "ratio": ratio})
    song_artist = _song_artist(song, artist, len(song_ids))
    edges = (frame.groupby(["user", "song"], sort=True)
             .agg(plays=("ratio", "size"), completion=("ratio", "mean"),
                  first_ts=("timestamp", "min"), last_ts=("timestamp", "max"))
             .reset_index())
    edges["artist"] = song_artist[edges["song"].to_numpy()]
    edges["plays"] = edges["plays"].astype(np.int64)
    edges["weight"] = np.log1p(edges["plays"]) * edges["completion"]
    edges["user_id"] = np.asarray(user_ids)[edges["user"].to_numpy()]
    edges["track_id"] = np.asarray(song_ids)[edges["song"].to_numpy()]
    edges["artist_id"] = np.asarray(artist_ids)[edges["artist"].to_numpy()]
    edges = edges[["user", "song", "artist", "user_id", "track_id", "artist_id", "plays",
                   "completion", "first_ts", "last_ts", "weight"]]
    edges.attrs["index_maps"] = IndexMaps(np.asarray(user_ids), np.asarray(song_ids),
                                          np.asarray(artist_ids), song_artist)
    return edges


# eq=False: pandas compares attrs with ==, which must not compare arrays element-wise.
@dataclass(frozen=True, eq=False)
class IndexMaps:
    """Original ids per contiguous index, and the artist index of every song index."""
    user_ids: np.ndarray
    song_ids: np.ndarray
    artist_ids: np.ndarray
    song_artist: np.ndarray


def index_maps(edges: pd.DataFrame) -> IndexMaps:
    """The :class:`IndexMaps` of an :func:`aggregate_edges` frame (from attrs or columns)."""
    maps = edges.attrs.get("index_maps")
    if isinstance(maps, IndexMaps):
        return maps

    def ids(index_col, id_col):
        table = edges[[index_col, id_col]].drop_duplicates(index_col).sort_values(index_col)
        return table[id_col].to_numpy()

    songs = edges[["song", "artist"]].drop_duplicates("song").sort_values("song")
    return IndexMaps(ids("user", "user_id"), ids("song", "track_id"),
                     ids("artist", "artist_id"), songs["artist"].to_numpy(np.int64))


def _completion_ratio(events: pd.DataFrame, song: np.ndarray,
                      n_songs: Optional[int] = None) -> np.ndarray:
    played = events["ms_played"].to_numpy(np.float64)
    # Per-track longest play: stand-in duration where duration_ms is absent or invalid.
    longest = np.zeros(n_songs if n_songs is not None else song.max() + 1)
    np.maximum.at(longest, song, played)
    duration = longest[song]
    if "duration_ms" in events:
        given = events["duration_ms"].to_numpy(np.float64)
        duration = np.where(np.isfinite(given) & (given > 0), given, duration)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(duration > 0, played / duration, 0.0)
    return np.clip(ratio, 0.0, 1.0)


def _song_artist(song: np.ndarray, artist: np.ndarray, n_songs: int) -> np.ndarray:
    pairs = pd.DataFrame({"song": song, "artist": artist})
    counts = pairs.value_counts().reset_index(name="n")
    counts = counts.sort_values(["song", "n", "artist"], ascending=[True, False, True])
    first = counts.drop_duplicates("song")
    out = np.zeros(n_songs, dtype=np.int64)
    out[first["song"].to_numpy()] = first["artist"].to_numpy()
    return out


@dataclass
class Interactions:
    """Tensors a trainer needs. Songs and users are contiguous 0-based indices.

    ``train_attr`` is [n_train, 2]: standardised log1p(plays) and standardised completion
    (train mean/std). ``train_plays`` holds raw play counts of the train edges."""
    n_users: int
    n_songs: int
    n_artists: int
    song_artist: torch.Tensor  # LongTensor[n_songs]
    train_user: torch.Tensor
    train_song: torch.Tensor
    train_attr: torch.Tensor  # FloatTensor[n_train, 2]
    val_user: torch.Tensor
    val_song: torch.Tensor
    test_user: torch.Tensor
    test_song: torch.Tensor
    train_plays: Optional[torch.Tensor] = None  # FloatTensor[n_train]
    split: str = "temporal"
    user_ids: Optional[np.ndarray] = None  # original id per user index
    song_ids: Optional[np.ndarray] = None
    artist_ids: Optional[np.ndarray] = None

    def pairs(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(user, song) tensors of ``"train"``, ``"val"`` or ``"test"``."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; expected train, val or test")
        return getattr(self, f"{split}_user"), getattr(self, f"{split}_song")


def temporal_split_labels(edges: pd.DataFrame, val_frac: float,
                          test_frac: float) -> np.ndarray:
    """0=train, 1=val, 2=test per edge row: per user, songs ordered by first listen; the last
    round(n*test_frac) are test, the round(n*val_frac) before them validation (each at least
    one when its fraction is > 0), at least one train item kept; users with < 3 songs: train."""
    order = np.lexsort((edges["song"].to_numpy(), edges["first_ts"].to_numpy(),
                        edges["user"].to_numpy()))
    user = edges["user"].to_numpy()[order]
    n = np.bincount(user)[user]
    rank = np.arange(len(user)) - np.searchsorted(user, user)  # 0 = earliest of the user

    def count(frac):
        c = np.floor(n * frac + 0.5).astype(np.int64)
        return np.where(frac > 0, np.maximum(c, 1), 0)

    n_test = count(test_frac)
    n_val = count(val_frac)
    n_val = np.clip(n_val, 0, np.maximum(n - 1 - n_test, 0))  # keep one train item
    n_test = np.clip(n_test, 0, n - 1 - n_val)
    small = n < 3
    n_test[small], n_val[small] = 0, 0
    label_sorted = np.where(rank >= n - n_test, 2, np.where(rank >= n - n_test - n_val, 1, 0))
    labels = np.empty(len(order), dtype=np.int64)
    labels[order] = label_sorted
    return labels


def held_out_cutoff(edges: pd.DataFrame, labels: np.ndarray, n_users: int) -> np.ndarray:
    """Per user, the timestamp of the first listen of a held-out song (int64 max when the user
    has none): the end of that user's training period."""
    cutoff = np.full(n_users, np.iinfo(np.int64).max, dtype=np.int64)
    held = labels > 0
    np.minimum.at(cutoff, edges["user"].to_numpy()[held], edges["first_ts"].to_numpy(np.int64)[held])
    return cutoff


def training_period_stats(events: pd.DataFrame, edges: pd.DataFrame,
                          cutoff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(plays, completion) of every edge row, from the user's events before ``cutoff[user]`` only.

    What a user did after their first held-out listen is the future at prediction time; counting
    it in the training edges' attributes would leak it into the model. An edge's own first
    listen is always counted (it may share the cutoff's second), so every training edge has at
    least one play. The stand-in duration (the track's longest play) also reads these events only."""
    maps = index_maps(edges)
    user = pd.Index(maps.user_ids).get_indexer(events["user_id"])
    song = pd.Index(maps.song_ids).get_indexer(events["track_id"])
    stamp = events["timestamp"].to_numpy(np.int64)
    first = edges.set_index(["user", "song"])["first_ts"]
    first_of_event = first.reindex(pd.MultiIndex.from_arrays([user, song])).to_numpy(np.int64)
    keep = (stamp < cutoff[user]) | (stamp == first_of_event)
    kept = events[keep]
    ratio = _completion_ratio(kept, song[keep], n_songs=len(maps.song_ids))
    stats = (pd.DataFrame({"user": user[keep], "song": song[keep], "ratio": ratio})
             .groupby(["user", "song"]).agg(plays=("ratio", "size"), completion=("ratio", "mean")))
    rows = stats.reindex(pd.MultiIndex.from_arrays([edges["user"].to_numpy(), edges["song"].to_numpy()]))
    return rows["plays"].fillna(0).to_numpy(np.float32), rows["completion"].fillna(0).to_numpy(np.float32)


def build_interactions(events: pd.DataFrame, val_frac: float = 0.15, test_frac: float = 0.15,
                       split: str = "temporal", refit: bool = False) -> Interactions:
    """Aggregate events and split them: ``"temporal"`` (per user, latest first-listens held
    out, see :func:`temporal_split_labels`) or ``"none"`` (everything in train).

    ``refit=True`` is the serving protocol: after hyperparameters were chosen on validation, the
    validation songs join the training set (the validation split is then empty) and the
    training period runs up to the user's first test listen. Edge attributes always come from
    the training period only (:func:`training_period_stats`)."""
    if split not in ("temporal", "none"):
        raise ValueError(f"unknown split {split!r}; expected 'temporal' or 'none'")
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError("val_frac and test_frac must be in [0, 1) with sum < 1")
    edges = aggregate_edges(events)
    maps = index_maps(edges)
    labels = (temporal_split_labels(edges, val_frac, test_frac) if split == "temporal"
              else np.zeros(len(edges), dtype=np.int64))
    if refit:
        labels = np.where(labels == 1, 0, labels)
    plays_np, completion_np = training_period_stats(
        events, edges, held_out_cutoff(edges, labels, len(maps.user_ids)))
    user = torch.tensor(edges["user"].to_numpy(np.int64))
    song = torch.tensor(edges["song"].to_numpy(np.int64))
    lab = torch.tensor(labels)
    train = lab == 0
    plays = torch.from_numpy(plays_np)[train]
    compl = torch.from_numpy(completion_np)[train]
    attr = torch.stack([standardise(torch.log1p(plays)), standardise(compl)], dim=1)
    return Interactions(
        n_users=len(maps.user_ids), n_songs=len(maps.song_ids),
        n_artists=len(maps.artist_ids), song_artist=torch.tensor(maps.song_artist),
        train_user=user[train], train_song=song[train], train_attr=attr,
        val_user=user[lab == 1], val_song=song[lab == 1],
        test_user=user[lab == 2], test_song=song[lab == 2],
        train_plays=plays, split=split, user_ids=maps.user_ids,
        song_ids=maps.song_ids, artist_ids=maps.artist_ids)


def standardise(x: torch.Tensor) -> torch.Tensor:
    if x.numel() < 2:
        return torch.zeros_like(x)
    std = x.std()
    return (x - x.mean()) / (std if std > 0 else 1.0)


LISTENS = ("user", "listens", "song")
LISTENED_BY = ("song", "rev_listens", "user")
BY_ARTIST = ("song", "by", "artist")
ARTIST_OF = ("artist", "rev_by", "song")
FOLLOWS = ("user", "follows", "artist")
FOLLOWED_BY = ("artist", "rev_follows", "user")
RELATIONS = (LISTENS, LISTENED_BY, BY_ARTIST, ARTIST_OF, FOLLOWS, FOLLOWED_BY)


def artist_following(inter: Interactions) -> tuple[torch.Tensor, torch.Tensor]:
    """User -> artist edges aggregated from the TRAINING edges (whose plays are training-period
    plays): how many of the artist's songs the user played and the artist's share of the user's
    plays. Listening is organised by artist, and one hop makes that visible to the attention.
    Returns (edge_index [2, n], attributes [n, 2])."""
    artist = inter.song_artist[inter.train_song]
    plays = inter.train_plays if inter.train_plays is not None else torch.ones(len(artist))
    keys = inter.train_user * inter.n_artists + artist
    pairs, inverse = torch.unique(keys, return_inverse=True)
    songs = torch.zeros(len(pairs)).index_add_(0, inverse, torch.ones(len(keys)))
    played = torch.zeros(len(pairs)).index_add_(0, inverse, plays.float())
    user, followed = pairs // inter.n_artists, pairs % inter.n_artists
    user_total = torch.zeros(inter.n_users).index_add_(0, user, played)
    share = played / user_total[user].clamp(min=1e-12)
    attributes = torch.stack([standardise(torch.log1p(songs)), standardise(share)], 1)
    return torch.stack([user, followed]), attributes


def build_graph(inter: Interactions) -> HeteroData:
    """HeteroData with node types user/song/artist and relations
    ``(user, listens, song)`` + reverse (TRAIN edges only; edge_attr = train_attr),
    ``(song, by, artist)`` + reverse (edge_attr zeros, so every relation has 2-dim attrs) and
    ``(user, follows, artist)`` + reverse (:func:`artist_following`)."""
    data = HeteroData()
    data["user"].num_nodes = inter.n_users
    data["song"].num_nodes = inter.n_songs
    data["artist"].num_nodes = inter.n_artists
    by = torch.stack([torch.arange(inter.n_songs), inter.song_artist])
    relations = {LISTENS: (torch.stack([inter.train_user, inter.train_song]), inter.train_attr),
                 BY_ARTIST: (by, torch.zeros(inter.n_songs, 2)),
                 FOLLOWS: artist_following(inter)}
    reverse = {LISTENS: LISTENED_BY, BY_ARTIST: ARTIST_OF, FOLLOWS: FOLLOWED_BY}
    for relation, (edge_index, edge_attr) in relations.items():
        data[relation].edge_index, data[relation].edge_attr = edge_index, edge_attr
        data[reverse[relation]].edge_index = edge_index.flip(0)
        data[reverse[relation]].edge_attr = edge_attr
    return data


# --------------------------------------------------------------------------------------------
# Negative sampling
# --------------------------------------------------------------------------------------------
def training_keys(inter: Interactions) -> torch.Tensor:
    """Sorted unique int64 keys ``user * n_songs + song`` of the training pairs."""
    keys = inter.train_user.long() * inter.n_songs + inter.train_song.long()
    return torch.unique(keys)  # unique() returns sorted values


def sample_negatives(users: torch.Tensor, inter_train_keys: torch.Tensor, n_songs: int,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One song per entry of ``users``, uniform among songs that user has NOT heard in
    training. Collisions are redrawn (vectorised) until none remain."""
    users = users.long()
    keys = inter_train_keys
    heard = (torch.searchsorted(keys, (users + 1) * n_songs)
             - torch.searchsorted(keys, users * n_songs))
    if bool((heard >= n_songs).any()):
        raise ValueError("a user has heard every song in training; no negative exists")
    songs = torch.randint(n_songs, users.shape, generator=generator)
    todo = torch.arange(len(users))
    while len(todo) and len(keys):
        cand = users[todo] * n_songs + songs[todo]
        pos = torch.searchsorted(keys, cand).clamp(max=len(keys) - 1)
        todo = todo[keys[pos] == cand]
        songs[todo] = torch.randint(n_songs, (len(todo),), generator=generator)
    return songs
