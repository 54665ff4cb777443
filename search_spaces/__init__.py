"""Tune search spaces: one module per algorithm, named by its registry entry (`search_space`).

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


def load_search_space(algorithm) -> ModuleType:
    """The search-space module of an algorithm (its AlgorithmSpec, or a registered name)."""
    from trainers.registry import get_algorithm

    spec = get_algorithm(algorithm) if isinstance(algorithm, str) else algorithm
    if not spec.search_space:
        raise ValueError(f"algorithm {spec.name!r} ({spec.origin}) declares no search space, so tune.py cannot "
                         f"search it; give its registry entry search_space='package.module'")
    try:
        module = importlib.import_module(spec.search_space)
    except ModuleNotFoundError as error:
        raise ValueError(f"the search space of {spec.name!r}, {spec.search_space}, cannot be imported ({error})") from error
    if not callable(getattr(module, "space", None)):
        raise ValueError(f"{spec.search_space} has no space() function")
    missing = [key for key in REQUIRED_KEYS if key not in module.space()]
    if missing:
        raise ValueError(f"{spec.search_space}.space() lacks {', '.join(missing)}")
    return module


def check_space_choices(config_class, config, space: dict) -> None:
    """Each listed value of the space (a choice or a grid axis), and a few draws of each range,
    put into the fixed config must validate: a clash (schedule_kwargs of one schedule while the
    space tries another; an alias of the `lr` that the space varies) fails here
    naming the key (exit 2), not in every trial after Ray has started."""
    from trainers.config import ConfigError, build_config

    base = config.model_dump()
    for key, domain in space.items():
        if isinstance(domain, dict):
            listed = domain.get("grid_search", [])
        elif hasattr(domain, "categories"):
            listed = domain.categories
        else:  # a range: seeded draws, so that the check is the same every time
            listed = [domain.sample(random_state=seed) for seed in range(3)] if hasattr(domain, "sample") else []
        for value in listed:
            try:
                build_config(config_class, {**base, key: value})
            except ConfigError as error:
                raise ConfigError(f"the search space's {key} = {value!r} does not fit the fixed config: "
                                  f"{error}") from None
