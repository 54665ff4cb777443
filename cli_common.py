"""What run.py and tune.py share: config assembly, exit codes, Ray start-up."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from trainers.config import ConfigError, TrainerConfig, build_config, load_yaml_config, overrides_from_sets
from trainers.registry import AlgorithmSpec, get_algorithm

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def require_minimums(parser, checks: list[tuple[str, float, float]]) -> None:
    """argparse exit 2 with a one-line message for a flag below its minimum."""
    for flag, value, low in checks:
        if value < low:
            parser.error(f"{flag} must be >= {low:g}, got {value:g}")


def assemble_config(algorithm: str, config_file: str | None, sets: list[str]) -> tuple[AlgorithmSpec, TrainerConfig]:
    """Defaults < YAML file < --set pairs, validated; raises ConfigError/UnknownAlgorithm."""
    spec = get_algorithm(algorithm)
    values = load_yaml_config(config_file) if config_file else {}
    values.update(overrides_from_sets(sets or []))
    config = build_config(spec.config_class, values)
    config.check_files()
    return spec, config


def start_ray(address: str | None, verbose: bool = True) -> None:
    """Join a running cluster (--address / RAY_ADDRESS) or start Ray in this process.

    verbose=False (the CLIs' default, a progress line instead): Ray's own start-up messages and
    the workers' output stay in Ray's logs (/tmp/ray/session_latest/logs), not on the console; a
    failure is still reported, with its reason.

    A local Ray binds its dashboard to 127.0.0.1 and keeps token authentication on
    (RAY_AUTH_MODE); the dashboard must stay on so that Ray Train's placement-group cleaner can
    free each Tune trial's resources.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    output = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if address:
        ray.init(address=address, **output)
    else:
        try:
            ray.init(dashboard_host="127.0.0.1", include_dashboard=True, **output)
        except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception for this
            if "missing packages" not in str(error):
                raise
            # a Ray installed without its [default] extra (e.g. from slim wheels on a GPU box):
            # training works without the dashboard; Tune's cleanup between trials is slower
            print("warning: Ray's dashboard packages are missing (pip install 'ray[default]'); "
                  "starting Ray without the dashboard", file=sys.stderr, flush=True)
            ray.shutdown()
            ray.init(include_dashboard=False, **output)


HELD_OUT_PREFIXES = ("test_", "final_")


def summary_order(keys) -> list[str]:
    """Final tables: the held-out metrics (test_*, final_*) first, then the rest, each sorted."""
    return sorted(keys, key=lambda key: (not key.startswith(HELD_OUT_PREFIXES), key))


def config_error_types() -> tuple[type[Exception], ...]:
    from trainers.registry import RegistryError, UnknownAlgorithm

    return (ConfigError, UnknownAlgorithm, RegistryError)


def resolve_storage(storage: str) -> Path:
    """A folder (local or NFS); an address (s3://...) is refused here: only run.py takes one."""
    if "://" in storage:
        raise ValueError(f"--storage {storage}: a search's storage is a folder (local, or NFS on a cluster); "
                         "run.py takes s3:// addresses")
    path = Path(storage).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
