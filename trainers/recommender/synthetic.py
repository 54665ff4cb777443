"""Seeded synthetic listening history and its on-disk cache (numpy / pandas, no torch).

``generate_listening_data()`` returns the tables ``events, songs, artists, users``;
:func:`ensure_synthetic_dataset` caches them as Parquet under a directory keyed by the
generator's parameters. ``timestamp`` is int64 unix seconds (UTC); the first day is
2024-01-01, a Monday. Ids are 0-based ints (``user_id``, ``track_id``, ``artist_id``).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from trainers.checkpoint import write_atomic

# Bump when the generator's output changes, so cached synthetic datasets are regenerated.
GENERATOR_VERSION = 1

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

    Each file is written atomically, so readers never see a half-written file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        write_atomic(directory / f"{name}.parquet", lambda stream: stream.write(buffer.getvalue()))
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

