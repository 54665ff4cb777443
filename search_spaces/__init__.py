"""One module per algorithm (`-` in a name written `_`): the Tune search space and its budget.

Each module defines `space() -> dict` of Tune domains over config keys; it must cover `lr`,
`patience` and `schedule`, plus the algorithm's own knobs. Optional: `MAX_ITERATIONS`, the
per-trial iteration budget used when the user does not set `max_iterations`, and `GPU_SHARE`,
the GPU fraction one trial gets from `tune.py --gpus-per-worker auto` (the default) when the
cluster has GPUs: trials that do not fill a GPU are packed several to one.
The metric and mode come from the algorithm's config (the same key early stopping uses).
"""
from __future__ import annotations

import importlib
from types import ModuleType

REQUIRED_KEYS = ("lr", "patience", "schedule")


def module_name(algorithm: str) -> str:
    return f"search_spaces.{algorithm.replace('-', '_')}"


def load_search_space(algorithm: str) -> ModuleType:
    try:
        module = importlib.import_module(module_name(algorithm))
    except ModuleNotFoundError as error:
        raise ValueError(f"no search space for {algorithm!r}: {module_name(algorithm)} is missing") from error
    missing = [key for key in REQUIRED_KEYS if key not in module.space()]
    if missing:
        raise ValueError(f"{module_name(algorithm)}.space() lacks {', '.join(missing)}")
    return module
