"""Reading user-supplied listening events (Parquet or CSV) into one clean frame (pandas, no torch).

Required columns: user_id, track_id, artist_id, timestamp, ms_played; ``duration_ms`` is
optional. ``timestamp`` becomes int64 unix seconds (UTC). Ids may be any type (strings too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("user_id", "track_id", "artist_id", "timestamp", "ms_played")


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
