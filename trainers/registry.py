"""Algorithm name -> trainer class, config class, search space: one open registry.

Every algorithm, the built-in ones included, is registered through the Python entry-point group
`trainyard.algorithms` of an installed package (this project's own pyproject.toml lists the
built-in ones). Each entry names an `Algorithm` (or, for short, a `Trainer` subclass that carries
its `config_class`):

    [project.entry-points."trainyard.algorithms"]
    my-algorithm = "my_package.algorithm:ALGORITHM"

`--algorithm package.module:NAME` resolves the same kind of object without packaging (a quick
experiment). Config classes import no torch, so the command line validates at once; the trainer
class is imported only when a run starts (torch-geometric, cshogi... are optional extras).
Entry points are read from the installed metadata: after changing them, `pip install -e .` again.
"""
from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from trainers.config import TrainerConfig

GROUP = "trainyard.algorithms"


class RegistryError(ValueError):
    """An algorithm cannot be used as registered; the message names the entry point."""


class UnknownAlgorithm(KeyError):
    def __str__(self) -> str:
        names = ", ".join(algorithm_names()) or "none: is trainyard installed (pip install -e .)?"
        return f"unknown algorithm {self.args[0]!r}; choose one of: {names} (or package.module:Class)"


@dataclass(frozen=True)
class Algorithm:
    """What a package registers under `trainyard.algorithms`.

    trainer       "module:Class" of the Trainer subclass, imported when a run starts
    config        the TrainerConfig subclass (its module should import no torch)
    search_space  module defining `space()` for tune.py (see search_spaces/__init__.py), or None
    ray_parts     "module:object", optional: the algorithm's own Ray parts (extra actors and
                  their resources, a Ray-side source); see distributed/resources.py `RayParts`.
                  Its module is imported in every Ray worker before the trainer is built.
    extra         the pip extra holding its dependencies (named in the error when missing)
    """

    trainer: str
    config: type[TrainerConfig]
    search_space: str | None = None
    ray_parts: str | None = None
    extra: str | None = None


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str                    # the name in checkpoints and run names
    reference: str               # what get_algorithm resolves again inside a Ray worker
    origin: str                  # where it was registered, for messages
    algorithm: Algorithm

    @property
    def config_class(self) -> type[TrainerConfig]:
        return self.algorithm.config

    @property
    def trainer_path(self) -> str:
        return self.algorithm.trainer

    @property
    def search_space(self) -> str | None:
        return self.algorithm.search_space

    @property
    def metric(self) -> str:
        return self.config_class.model_fields["metric"].default

    @property
    def mode(self) -> str:
        return self.config_class.model_fields["mode"].default

    def trainer_class(self):
        from trainers.base import Trainer

        try:
            trainer = _import_object(self.trainer_path)
        except ImportError as error:
            hint = f": pip install -e '.[{self.algorithm.extra}]'" if self.algorithm.extra else ""
            raise RegistryError(f"algorithm {self.name!r} ({self.origin}): its trainer {self.trainer_path} "
                                f"cannot be imported{hint} ({error})") from error
        except AttributeError as error:
            raise RegistryError(f"algorithm {self.name!r} ({self.origin}): its trainer "
                                f"{self.trainer_path} does not exist ({error})") from None
        if not (isinstance(trainer, type) and issubclass(trainer, Trainer)):
            raise RegistryError(f"algorithm {self.name!r} ({self.origin}): {self.trainer_path} is not a "
                                f"trainers.base.Trainer subclass")
        written = trainer.algorithm or trainer.__name__  # the name its checkpoints carry
        if written != self.name:
            raise RegistryError(f"algorithm {self.name!r} ({self.origin}): its trainer {self.trainer_path} has "
                                f"algorithm = {written!r}; set it to {self.name!r} (checkpoints carry it, and "
                                f"a resume checks it)")
        return trainer

    def ray_parts(self) -> Any:
        """The algorithm's Ray-parts hook (None when it has no Ray parts of its own)."""
        if self.algorithm.ray_parts is None:
            return None
        try:
            return _import_object(self.algorithm.ray_parts)
        except (ImportError, AttributeError) as error:
            raise RegistryError(f"algorithm {self.name!r} ({self.origin}): its ray_parts "
                                f"{self.algorithm.ray_parts} cannot be loaded ({error})") from error


def _import_object(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    obj = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else []:
        obj = getattr(obj, part)
    return obj


@functools.cache
def _entry_points() -> tuple[metadata.EntryPoint, ...]:
    return tuple(metadata.entry_points(group=GROUP))


def reload() -> None:
    """Forget what was read (after installing or removing a package in this process)."""
    _entry_points.cache_clear()
    _load.cache_clear()


def algorithm_names() -> list[str]:
    return list(dict.fromkeys(entry.name for entry in _entry_points()))


def _describe(entry: metadata.EntryPoint) -> str:
    package = entry.dist.name if entry.dist is not None else "an unknown package"
    return f"entry point {entry.name!r} = {entry.value!r} of package {package!r}"


def _as_algorithm(obj: Any, where: str) -> Algorithm:
    """An Algorithm, or a Trainer subclass carrying config_class (and optionally search_space
    and ray_parts class attributes), checked: the config must be a TrainerConfig subclass."""
    if not isinstance(obj, Algorithm):
        from trainers.base import Trainer

        if not (isinstance(obj, type) and issubclass(obj, Trainer)):
            raise RegistryError(f"{where}: names {type(obj).__name__} {obj!r}, not a trainyard Algorithm "
                                f"or a Trainer subclass")
        obj = Algorithm(trainer=f"{obj.__module__}:{obj.__qualname__}", config=obj.config_class,
                        search_space=getattr(obj, "search_space", None), ray_parts=getattr(obj, "ray_parts", None))
    if not (isinstance(obj.config, type) and issubclass(obj.config, TrainerConfig)):
        raise RegistryError(f"{where}: its config {obj.config!r} is not a trainers.config.TrainerConfig subclass")
    return obj


@functools.cache
def _load(reference: str) -> AlgorithmSpec:
    if ":" in reference:  # package.module:Class, no packaging
        try:
            obj = _import_object(reference)
        except (ImportError, AttributeError) as error:
            raise RegistryError(f"--algorithm {reference}: cannot be imported ({error})") from None
        algorithm = _as_algorithm(obj, f"--algorithm {reference}")
        try:
            trainer = _import_object(algorithm.trainer)
        except (ImportError, AttributeError) as error:
            raise RegistryError(f"--algorithm {reference}: its trainer {algorithm.trainer} cannot be imported "
                                f"({error})") from None
        name = getattr(trainer, "algorithm", "") or getattr(trainer, "__name__", reference)
        return AlgorithmSpec(name, reference, f"--algorithm {reference}", algorithm)
    entries = [entry for entry in _entry_points() if entry.name == reference]
    if not entries:
        raise UnknownAlgorithm(reference)
    packages = {(entry.dist.name if entry.dist is not None else "?"): entry for entry in entries}
    if len(packages) > 1:
        raise RegistryError(f"algorithm {reference!r} is registered by {len(packages)} packages: "
                            + "; ".join(_describe(entry) for entry in packages.values())
                            + ". Uninstall one of them.")
    entry = entries[0]
    where = _describe(entry)
    try:
        obj = entry.load()
    except (ImportError, AttributeError) as error:
        raise RegistryError(f"{where}: cannot be loaded ({type(error).__name__}: {error})") from None
    return AlgorithmSpec(reference, reference, where, _as_algorithm(obj, where))


def get_algorithm(name: str) -> AlgorithmSpec:
    """The registered algorithm NAME, or the object at package.module:NAME; raises
    UnknownAlgorithm or RegistryError (both bad input: exit 2)."""
    return _load(name)


def run_name_prefix(spec: AlgorithmSpec) -> str:
    """The algorithm's name as a file name (a module:Class reference has dots and a colon)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", spec.name).strip("-") or "algorithm"


class _Registered(Mapping):
    """name -> AlgorithmSpec of every registered algorithm, each loaded when first looked up."""

    def __getitem__(self, name: str) -> AlgorithmSpec:
        if name not in algorithm_names():
            raise KeyError(name)
        return get_algorithm(name)

    def __iter__(self) -> Iterator[str]:
        return iter(algorithm_names())

    def __len__(self) -> int:
        return len(algorithm_names())


ALGORITHMS: Mapping[str, AlgorithmSpec] = _Registered()
