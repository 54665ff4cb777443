"""Checkpoint files: tensors and plain data only, written atomically, loaded with weights_only.

A checkpoint is one file, `state.pt`, holding {"algorithm", "config", "iteration", "trainer"}.
It is written to a temporary name in the same folder and renamed, so a crash mid-write leaves
either the previous file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

STATE_FILE = "state.pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, or written by another algorithm."""


class WrongAlgorithmError(CheckpointError):
    """A sound checkpoint of another algorithm: a mistake to report, not damage to route around."""


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through `write(stream)` to a temporary name in the same folder, fsync, rename:
    a crash mid-write leaves the previous file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    return write_atomic(path, lambda stream: torch.save(payload, stream))


def write_json_atomic(data: Any, path: str | Path) -> Path:
    return write_atomic(path, lambda stream: stream.write(json.dumps(data, indent=1).encode()))


def load_checkpoint(path: str | Path, algorithm: str | None = None) -> dict[str, Any]:
    """Load a checkpoint file (or a folder holding `state.pt`); never unpickles code."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle with code in it, not a torch file...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {reason[:200]}") from None
    if not isinstance(payload, dict) or "algorithm" not in payload or "trainer" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a trainyard checkpoint (no algorithm/trainer entries)")
    if algorithm is not None and payload["algorithm"] != algorithm:
        raise WrongAlgorithmError(
            f"checkpoint {path} was written by algorithm {payload['algorithm']!r}, not {algorithm!r}"
        )
    return payload
