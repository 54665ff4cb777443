"""Listening data for the GAT music recommender: generation, loading, splitting, graphs.

Everything here is plain numpy / pandas / PyTorch (no Ray), so it can be imported and tested
anywhere. The pipeline is::

    tables = generate_listening_data()            # or load_events(path) for user data
    edges = aggregate_edges(tables["events"])      # one row per (user, song)
    inter = build_interactions(tables["events"])   # tensors + per-user temporal split
    graph = build_graph(inter)                     # HeteroData on TRAIN edges only

Conventions
-----------
* Ids in generated data are 0-based ints (``user_id``, ``track_id``, ``artist_id``). User data
  may use any ids (strings too); :func:`aggregate_edges` always maps them to contiguous
  0-based indices (``user``, ``song``, ``artist``), sorted by original id.
* ``timestamp`` is int64 unix seconds (UTC) everywhere. The generator's first day is
  2024-01-01, a Monday. :func:`load_events` converts datetime strings / datetime columns.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

# Bump when the generator's output changes, so cached synthetic datasets are regenerated.
GENERATOR_VERSION = 1

REQUIRED_COLUMNS = ("user_id", "track_id", "artist_id", "timestamp", "ms_played")
TABLES = ("events", "songs", "artists", "users")

# --------------------------------------------------------------------------------------------
# Generator constants (why these numbers: they give ~100k events for the defaults with a
# realistic mix of light and heavy listeners).
# --------------------------------------------------------------------------------------------
_EPOCH_START = 1_704_067_200  # 2024-01-01 00:00:00 UTC, a Monday
USER_TYPES = ("casual", "regular", "power")
_TYPE_SHARE = np.array([0.50, 0.35, 0.15])
_SESSIONS_PER_DAY = np.array([0.2, 0.5, 1.0])  # mean per user type
_TRACKS_PER_SESSION = np.array([4.0, 8.0, 12.0])  # mean (geometric) per user type
_WEEKEND_FACTOR = np.array([1.6, 1.2, 1.0])  # casual users listen mostly at weekends
_SAME_ARTIST_CONTINUE = 0.45  # chance the next track in a session stays on the same artist
# Users fall into taste groups that agree on which artists and which of their songs they like
# beyond global popularity (deep cuts). This is collaborative signal that a rule using only
# global popularity cannot see, as in real listening data.
_TASTE_GROUPS = 8
_GROUP_TASTE_SIGMA = 1.0

# Hour-of-day activity: quiet nights, commute peaks, lunch, big evening peak.
_HOURS_WEEKDAY = np.array([1, 0.5, 0.3, 0.2, 0.2, 0.4, 1.5, 3.5, 4.5, 3, 2.5, 2.5,
                           3.5, 3, 2.5, 2.5, 3, 4.5, 5, 5, 4.5, 4, 3, 2], dtype=float)
_HOURS_WEEKEND = np.array([2.5, 2, 1.2, 0.6, 0.3, 0.3, 0.4, 0.8, 1.5, 2.5, 3.5, 4,
                           4, 4, 4, 4, 4, 4, 4.5, 5, 5, 4.5, 4, 3], dtype=float)

# Where a new run of tracks comes from: preferred artist, liked genre, globally popular.
_SOURCE_SHARE = np.array([0.70, 0.20, 0.10])
# Play behaviour per source (full, skip, partial). Exploration is skipped more often, so
# completion carries signal; overall mix is ~40% full / 20% skip / 40% partial.
_BEHAVIOUR = np.array([[0.46, 0.14, 0.40],
                       [0.28, 0.30, 0.42],
                       [0.24, 0.38, 0.38]])


# --------------------------------------------------------------------------------------------
# Small vectorised sampling helpers
# --------------------------------------------------------------------------------------------
def _weighted_topk(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """k distinct columns per row, drawn without replacement proportionally to ``weights``
    (rows x n). Gumbel-top-k: the k largest of log(w) + Gumbel noise is exactly such a draw."""
    with np.errstate(divide="ignore"):
        keys = np.log(weights) + rng.gumbel(size=weights.shape)
    return np.argsort(-keys, axis=1)[:, :k]


def _sample_rows(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One column index per row of ``weights`` (rows x n), proportional to the row."""
    cdf = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(axis=1), weights.shape[1] - 1)


def _sample_in_groups(rng: np.random.Generator, group_of_item: np.ndarray,
                      item_weight: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """For each entry of ``groups`` draw an item of that group, proportional to item_weight.

    Items are sorted by group once; a draw is then a binary search of a uniform number placed
    inside the group's slice of the global cumulative weight. Groups must be non-empty."""
    order = np.argsort(group_of_item, kind="stable")
    cum = np.cumsum(item_weight[order])
    n_groups = max(int(group_of_item.max()), int(groups.max(initial=-1))) + 1
    bounds = np.searchsorted(group_of_item[order], np.arange(n_groups + 1))
    lo = np.where(bounds[:-1] > 0, cum[np.maximum(bounds[:-1] - 1, 0)], 0.0)
    hi = cum[np.maximum(bounds[1:] - 1, 0)]
    target = lo[groups] + rng.random(len(groups)) * (hi[groups] - lo[groups])
    pos = np.searchsorted(cum, target, side="right")
    # Clamp against float round-off at the slice edges.
    pos = np.clip(pos, bounds[groups], bounds[groups + 1] - 1)
    return order[pos]


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------
def _make_artists(rng, n_artists: int, n_genres: int):
    genre_pop = 1.0 / np.arange(1, n_genres + 1)  # Zipf(1) popularity of genres
    genre_pop /= genre_pop.sum()
    popularity = rng.pareto(1.5, n_artists) + 1.0  # classic Pareto(alpha=1.5, x_m=1)
    n_genre = rng.integers(1, min(3, n_genres) + 1, n_artists)
    genres = _weighted_topk(rng, np.broadcast_to(genre_pop, (n_artists, n_genres)),
                            min(3, n_genres))
    has_genre = np.arange(genres.shape[1])[None, :] < n_genre[:, None]
    return genre_pop, popularity, genres, has_genre


def _make_songs(rng, n_songs: int, n_artists: int, artist_pop, artist_genres, artist_has):
    # Every artist gets one song if possible; the rest follow artist popularity.
    base = np.arange(min(n_songs, n_artists))
    extra = rng.choice(n_artists, n_songs - len(base), p=artist_pop / artist_pop.sum())
    song_artist = rng.permutation(np.concatenate([base, extra]))
    # Within an artist a few songs are hits: heavy-tailed appeal.
    appeal = rng.lognormal(0.0, 1.2, n_songs)
    n_genre = artist_has.sum(axis=1)[song_artist]
    song_genre = artist_genres[song_artist, (rng.random(n_songs) * n_genre).astype(int)]
    duration = np.clip(rng.lognormal(np.log(210_000), 0.25, n_songs), 60_000, 600_000)
    return song_artist, appeal, song_genre, duration.astype(np.int64)


def _genre_affinity(rng, n_users, genre_pop):
    """1-3 favourite genres per user (popular genres more likely) with Dirichlet weights,
    plus a small floor so every genre can be explored."""
    n_genres = len(genre_pop)
    n_fav = rng.integers(1, min(3, n_genres) + 1, n_users)
    fav = _weighted_topk(rng, np.broadcast_to(genre_pop, (n_users, n_genres)), min(3, n_genres))
    fav_w = rng.gamma(1.0, size=fav.shape) * (np.arange(fav.shape[1]) < n_fav[:, None])
    affinity = np.full((n_users, n_genres), 0.02)
    np.add.at(affinity, (np.repeat(np.arange(n_users), fav.shape[1]), fav.ravel()),
              (fav_w / fav_w.sum(axis=1, keepdims=True)).ravel())
    return affinity / affinity.sum(axis=1, keepdims=True), fav, n_fav


def _make_users(rng, n_users, n_days, genre_pop, artist_pop, artist_genres, artist_has,
                has_songs):
    n_genres, n_artists = len(genre_pop), len(artist_pop)
    user_type = rng.choice(3, n_users, p=_TYPE_SHARE)
    activity = _SESSIONS_PER_DAY[user_type] * rng.lognormal(-0.08, 0.4, n_users)
    affinity, fav, n_fav = _genre_affinity(rng, n_users, genre_pop)
    taste_group = rng.integers(0, _TASTE_GROUPS, n_users)
    # Preferred artists: popularity-weighted, tilted towards artists of the user's genres and
    # towards artists the user's taste group likes. Only artists with songs qualify.
    artist_genre = np.zeros((n_artists, n_genres))
    np.add.at(artist_genre, (np.repeat(np.arange(n_artists), artist_genres.shape[1]),
                             artist_genres.ravel()), artist_has.ravel().astype(float))
    match = affinity @ artist_genre.T  # (n_users, n_artists)
    group_artist = rng.lognormal(0.0, _GROUP_TASTE_SIGMA, (_TASTE_GROUPS, n_artists))
    weight = (artist_pop * has_songs)[None, :] * (0.002 + match) * group_artist[taste_group]
    k_max = min(10, int(has_songs.sum()))
    n_pref = np.minimum(rng.integers(3, 11, n_users), k_max)
    pref = _weighted_topk(rng, weight, k_max)  # strongest first
    pref_w = rng.gamma(1.0, size=pref.shape) * (np.arange(k_max) < n_pref[:, None])
    # Taste evolves: the first 3 preferred artists are known from day 0, the others are
    # discovered at a random time during the period (so late listens hold new artists).
    since = rng.uniform(0, n_days, pref.shape) * (np.arange(k_max) >= 3)[None, :]
    return dict(user_type=user_type, activity=activity, affinity=affinity, fav=fav,
                n_fav=n_fav, taste_group=taste_group, pref=pref, pref_w=pref_w,
                n_pref=n_pref, since=since)


def _make_sessions(rng, user_type, activity, n_days):
    n_sessions = np.maximum(rng.poisson(activity * n_days), 1)  # everybody listens once
    s_user = np.repeat(np.arange(len(user_type)), n_sessions)
    s_type = user_type[s_user]
    weekend = (np.arange(n_days) % 7) >= 5  # day 0 is a Monday
    day_w = np.where(weekend[None, :], _WEEKEND_FACTOR[:, None], 1.0)  # (3, n_days)
    day = _sample_rows(rng, day_w[s_type])
    curves = np.stack([_HOURS_WEEKDAY, _HOURS_WEEKEND])
    hour = _sample_rows(rng, curves[weekend[day].astype(int)])
    start = (_EPOCH_START + day.astype(np.int64) * 86_400 + hour * 3_600
             + rng.integers(0, 3_600, len(day)))
    length = np.minimum(rng.geometric(1.0 / _TRACKS_PER_SESSION[s_type]), 60)
    return s_user, start, length


class _GroupSongSampler:
    """Draws a song for (taste group, key) pairs, where key is a song attribute (artist or
    genre) and weights are per group: all groups' songs are flattened into one table so a
    single vectorised draw serves every group."""

    def __init__(self, key_of_song, n_keys, group_weight):
        self.n_keys, self.n_songs = n_keys, group_weight.shape[1]
        groups = np.arange(group_weight.shape[0])[:, None]
        self.flat_key = (groups * n_keys + key_of_song[None, :]).ravel()
        self.flat_weight = group_weight.ravel()

    def draw(self, rng, group, key):
        flat = _sample_in_groups(rng, self.flat_key, self.flat_weight,
                                 group * self.n_keys + key)
        return flat % self.n_songs


def generate_listening_data(n_users: int = 1000, n_songs: int = 5000, n_artists: int = 500,
                            n_days: int = 30, n_genres: int = 35,
                            seed: int = 42) -> dict[str, pd.DataFrame]:
    """Seeded synthetic listening history; returns tables ``events, songs, artists, users``.

    Each session is cut into "runs" of tracks: a run starts on one of the user's preferred
    artists already discovered at that time (70%), a song of a liked genre (20%) or a
    globally popular song (10%), and each next track stays on the run's artist with
    probability 0.45. Songs inside an artist follow a heavy-tailed appeal (hits), reweighted
    per taste group (8 groups of users who share preferences for particular songs and
    artists). ``events.timestamp`` is the play's start in int64 unix seconds; plays in a
    session follow each other back to back (ms_played plus a 0-4 s gap).
    """
    rng = np.random.default_rng(seed)
    genre_pop, artist_pop, artist_genres, artist_has = _make_artists(rng, n_artists, n_genres)
    song_artist, appeal, song_genre, duration = _make_songs(
        rng, n_songs, n_artists, artist_pop, artist_genres, artist_has)
    has_songs = np.bincount(song_artist, minlength=n_artists) > 0
    users = _make_users(rng, n_users, n_days, genre_pop, artist_pop, artist_genres,
                        artist_has, has_songs)
    s_user, s_start, s_len = _make_sessions(rng, users["user_type"], users["activity"], n_days)

    # Events: position in session, then runs of same-artist tracks.
    n_events = int(s_len.sum())
    ev_session = np.repeat(np.arange(len(s_len)), s_len)
    first_of_session = np.concatenate([[0], np.cumsum(s_len)[:-1]])
    position = np.arange(n_events) - first_of_session[ev_session]
    ev_user = s_user[ev_session]
    new_run = (position == 0) | (rng.random(n_events) >= _SAME_ARTIST_CONTINUE)
    run_id = np.cumsum(new_run) - 1
    run_day = (s_start[ev_session[new_run]] - _EPOCH_START) / 86_400.0
    run_source = rng.choice(3, len(run_day), p=_SOURCE_SHARE)

    group_appeal = appeal[None, :] * rng.lognormal(0.0, _GROUP_TASTE_SIGMA,
                                                   (_TASTE_GROUPS, n_songs))
    in_artist = _GroupSongSampler(song_artist, n_artists, group_appeal)
    in_genre = _GroupSongSampler(song_genre, n_genres, group_appeal * artist_pop[song_artist])
    group = users["taste_group"][ev_user]
    run_song = _draw_run_songs(rng, run_source, ev_user[new_run], group[new_run], run_day,
                               users, in_artist, in_genre, song_genre,
                               artist_pop[song_artist] * appeal)
    # Continuations stay on the run's artist and draw another song of it.
    track = run_song[run_id]
    cont = ~new_run
    track[cont] = in_artist.draw(rng, group[cont], song_artist[track[cont]])

    ms_played = _play_behaviour(rng, run_source[run_id], duration[track])
    timestamp = _session_timestamps(rng, ms_played, s_start, ev_session, first_of_session)
    events = pd.DataFrame({
        "user_id": ev_user.astype(np.int64), "track_id": track.astype(np.int64),
        "artist_id": song_artist[track].astype(np.int64), "timestamp": timestamp,
        "ms_played": ms_played, "duration_ms": duration[track],
    }).sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)
    return {
        "events": events,
        "songs": pd.DataFrame({"track_id": np.arange(n_songs, dtype=np.int64),
                               "artist_id": song_artist.astype(np.int64),
                               "genre": song_genre.astype(np.int64),
                               "duration_ms": duration, "appeal": appeal}),
        "artists": pd.DataFrame({"artist_id": np.arange(n_artists, dtype=np.int64),
                                 "popularity": artist_pop,
                                 "genres": _ragged(artist_genres, artist_has.sum(axis=1))}),
        "users": _users_table(users),
    }


def _draw_run_songs(rng, source, user, group, day, users, in_artist, in_genre, song_genre,
                    song_pop):
    """First song of each run, by the run's source (0 preferred, 1 genre, 2 popular)."""
    song = np.empty(len(source), dtype=np.int64)
    src = source == 0  # a preferred artist discovered by then, then a song of it
    u = user[src]
    weight = users["pref_w"][u] * (users["since"][u] <= day[src, None])
    artist = users["pref"][u, _sample_rows(rng, weight)]
    song[src] = in_artist.draw(rng, group[src], artist)
    src = source == 1  # a liked genre, then a song of it (group taste x popularity)
    genre = _sample_rows(rng, users["affinity"][user[src]])
    genre = _fallback_to_populated(genre, song_genre, rng)
    song[src] = in_genre.draw(rng, group[src], genre)
    src = source == 2  # globally popular
    song[src] = rng.choice(len(song_pop), int(src.sum()), p=song_pop / song_pop.sum())
    return song


def _users_table(users: dict) -> pd.DataFrame:
    n = len(users["user_type"])
    return pd.DataFrame({
        "user_id": np.arange(n, dtype=np.int64),
        "user_type": np.asarray(USER_TYPES)[users["user_type"]],
        "sessions_per_day": users["activity"],
        "taste_group": users["taste_group"].astype(np.int64),
        "preferred_artists": _ragged(users["pref"], users["n_pref"]),
        "preferred_since_day": _ragged(users["since"], users["n_pref"]),
        "favourite_genres": _ragged(users["fav"], users["n_fav"]),
    })


def _fallback_to_populated(genre, song_genre, rng):
    """A genre may have no songs on tiny catalogues; send such draws to a random song's genre."""
    populated = np.zeros(max(int(genre.max(initial=0)), int(song_genre.max())) + 1, bool)
    populated[song_genre] = True
    empty = ~populated[genre]
    genre = genre.copy()
    genre[empty] = song_genre[rng.integers(0, len(song_genre), int(empty.sum()))]
    return genre


def _play_behaviour(rng, source, duration):
    """ms_played from behaviour: full play, skip (1-30 s) or partial (30-95% of the song)."""
    kind = _sample_rows(rng, _BEHAVIOUR[source])
    skip = np.minimum(rng.integers(1_000, 30_000, len(kind)), duration)
    partial = (duration * rng.uniform(0.30, 0.95, len(kind))).astype(np.int64)
    return np.select([kind == 0, kind == 1], [duration, skip], partial).astype(np.int64)


def _session_timestamps(rng, ms_played, s_start, ev_session, first_of_session):
    """Start time of each play: session start + time spent on earlier plays of the session."""
    step = ms_played // 1000 + rng.integers(0, 5, len(ms_played))
    cum = np.cumsum(step) - step  # exclusive running total over all events
    within = cum - cum[first_of_session][ev_session]
    return (s_start[ev_session] + within).astype(np.int64)


def _ragged(matrix: np.ndarray, lengths: np.ndarray) -> list:
    """Rows of a padded matrix cut to their lengths (for list columns in Parquet)."""
    return [row[:n].tolist() for row, n in zip(matrix, lengths)]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def write_dataset(tables: dict[str, pd.DataFrame], directory) -> Path:
    """Write one ``<name>.parquet`` per table into ``directory``; returns the directory.

    Each file is written under a temporary name and ``os.replace``d, so readers never see a
    half-written file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        final = directory / f"{name}.parquet"
        tmp = directory / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    return directory


def synthetic_dataset_dir(directory, **generator_params) -> Path:
    """Cache directory for a parameter set: ``directory/synthetic-<10 hex of sha1(params)>``."""
    bound = inspect.signature(generate_listening_data).bind(**generator_params)
    bound.apply_defaults()
    key = json.dumps({"version": GENERATOR_VERSION, **bound.arguments}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(directory) / f"synthetic-{digest}"


def ensure_synthetic_dataset(directory, **generator_params) -> Path:
    """Path of ``events.parquet`` of the cached synthetic dataset, generating it if missing.

    The dataset is written into a private temporary directory that is renamed into place in
    one step; if two processes race, one rename wins and the loser discards its copy."""
    final = synthetic_dataset_dir(directory, **generator_params)
    events = final / "events.parquet"
    if events.exists():
        return events
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        write_dataset(generate_listening_data(**generator_params), tmp)
        try:
            os.rename(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            if not events.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return events


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def load_events(path) -> pd.DataFrame:
    """Read listening events from Parquet (``.parquet``/``.pq``) or CSV (``.csv``).

    Required columns: user_id, track_id, artist_id, timestamp, ms_played; ``duration_ms`` is
    optional. Timestamps become int64 unix seconds (numbers are taken as seconds; datetime
    strings/columns are converted, naive ones read as UTC). Errors are one-line
    ``FileNotFoundError``/``ValueError`` messages that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"events file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise ValueError(f"unsupported events file suffix '{path.suffix}' for {path} "
                         "(expected .parquet, .pq or .csv)")
    kind = "CSV" if suffix == ".csv" else "Parquet"
    try:
        frame = pd.read_csv(path) if kind == "CSV" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"events file {path} is empty") from None
    except Exception as exc:  # pyarrow/pandas raise many types; report them uniformly
        raise ValueError(f"could not parse {path} as {kind}: {_one_line(exc)}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"events file {path} is missing required columns: "
                         f"{', '.join(missing)}")
    if frame.empty:
        raise ValueError(f"events file {path} is empty (no rows)")
    return _clean_events(frame, path)


def _clean_events(frame: pd.DataFrame, path) -> pd.DataFrame:
    keep = list(REQUIRED_COLUMNS) + (["duration_ms"] if "duration_ms" in frame else [])
    frame = frame[keep].copy()
    if frame[["user_id", "track_id", "artist_id"]].isna().any().any():
        raise ValueError(f"events file {path} has empty user_id/track_id/artist_id values")
    for col in [c for c in ("ms_played", "duration_ms") if c in frame]:
        values = pd.to_numeric(frame[col], errors="coerce")
        if values.isna().any() and col == "ms_played":
            raise ValueError(f"events file {path}: column ms_played has non-numeric values")
        frame[col] = values.clip(lower=0)
    frame["timestamp"] = _to_unix_seconds(frame["timestamp"], path)
    return frame.reset_index(drop=True)


def _to_unix_seconds(column: pd.Series, path) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        if column.isna().any():
            raise ValueError(f"events file {path}: column timestamp has missing values")
        return column.astype(np.int64)
    try:
        stamps = pd.to_datetime(column, utc=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"events file {path}: column timestamp could not be parsed as "
                         f"dates ({_one_line(exc)})") from None
    if stamps.isna().any():
        raise ValueError(f"events file {path}: column timestamp has missing values")
    return stamps.dt.tz_localize(None).astype("datetime64[s]").astype(np.int64)


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


def _completion_ratio(events: pd.DataFrame, song: np.ndarray) -> np.ndarray:
    played = events["ms_played"].to_numpy(np.float64)
    # Per-track longest play: stand-in duration where duration_ms is absent or invalid.
    longest = np.zeros(song.max() + 1)
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


def build_interactions(events: pd.DataFrame, val_frac: float = 0.15, test_frac: float = 0.15,
                       split: str = "temporal") -> Interactions:
    """Aggregate events and split them: ``"temporal"`` (per user, latest first-listens held
    out, see :func:`temporal_split_labels`) or ``"none"`` (everything in train)."""
    if split not in ("temporal", "none"):
        raise ValueError(f"unknown split {split!r}; expected 'temporal' or 'none'")
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError("val_frac and test_frac must be in [0, 1) with sum < 1")
    edges = aggregate_edges(events)
    maps = index_maps(edges)
    labels = (temporal_split_labels(edges, val_frac, test_frac) if split == "temporal"
              else np.zeros(len(edges), dtype=np.int64))
    user = torch.tensor(edges["user"].to_numpy(np.int64))
    song = torch.tensor(edges["song"].to_numpy(np.int64))
    lab = torch.tensor(labels)
    train = lab == 0
    plays = torch.tensor(edges["plays"].to_numpy(np.float32))
    compl = torch.tensor(edges["completion"].to_numpy(np.float32))
    attr = torch.stack([_standardise(torch.log1p(plays[train])),
                        _standardise(compl[train])], dim=1)
    return Interactions(
        n_users=len(maps.user_ids), n_songs=len(maps.song_ids),
        n_artists=len(maps.artist_ids), song_artist=torch.tensor(maps.song_artist),
        train_user=user[train], train_song=song[train], train_attr=attr,
        val_user=user[lab == 1], val_song=song[lab == 1],
        test_user=user[lab == 2], test_song=song[lab == 2],
        train_plays=plays[train], split=split, user_ids=maps.user_ids,
        song_ids=maps.song_ids, artist_ids=maps.artist_ids)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    if x.numel() < 2:
        return torch.zeros_like(x)
    std = x.std()
    return (x - x.mean()) / (std if std > 0 else 1.0)


def build_graph(inter: Interactions) -> HeteroData:
    """HeteroData with node types user/song/artist and relations
    ``(user, listens, song)`` + reverse (TRAIN edges only; edge_attr = train_attr) and
    ``(song, by, artist)`` + reverse (edge_attr zeros, so every relation has 2-dim attrs)."""
    data = HeteroData()
    data["user"].num_nodes = inter.n_users
    data["song"].num_nodes = inter.n_songs
    data["artist"].num_nodes = inter.n_artists
    listens = torch.stack([inter.train_user, inter.train_song])
    data["user", "listens", "song"].edge_index = listens
    data["user", "listens", "song"].edge_attr = inter.train_attr
    data["song", "rev_listens", "user"].edge_index = listens.flip(0)
    data["song", "rev_listens", "user"].edge_attr = inter.train_attr
    by = torch.stack([torch.arange(inter.n_songs), inter.song_artist])
    data["song", "by", "artist"].edge_index = by
    data["song", "by", "artist"].edge_attr = torch.zeros(inter.n_songs, 2)
    data["artist", "rev_by", "song"].edge_index = by.flip(0)
    data["artist", "rev_by", "song"].edge_attr = torch.zeros(inter.n_songs, 2)
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
