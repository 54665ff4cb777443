"""Typed, validated configuration shared by every algorithm.

Configs are pydantic models: a wrong value fails at the edge (the command line), before Ray
starts, with the field name and the allowed range. This module imports no torch so that the
command line can validate in milliseconds.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator

Schedule = Literal["none", "step", "plateau", "cosine", "cosine_warm_restarts"]
Mode = Literal["min", "max"]


class ConfigError(ValueError):
    """A configuration value a user gave is wrong; the message names the field."""


class TrainerConfig(BaseModel):
    """Keys every algorithm shares; each algorithm subclasses this and adds its own."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    lr: float = Field(1e-2, gt=0, le=10, description="learning rate")
    patience: int = Field(10, ge=0, le=10_000, description="iterations without improvement before stopping; 0 = never stop early")
    min_delta: float = Field(0.0, ge=0, description="smallest change of the metric that counts as an improvement")
    schedule: Schedule = Field("none", description="learning-rate schedule")
    schedule_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the schedule")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    max_iterations: int = Field(50, ge=1, le=1_000_000)
    metric: str = Field("loss", min_length=1, description="metric key for early stopping, best state and checkpoint ranking")
    mode: Mode = "min"
    figures: bool = Field(True, description="draw the run's figures at the end (learning curves, reconstructions, "
                                            "Elo, samples); the data outputs are written either way")
    checkpoint_every: int = Field(5, ge=1, le=1_000_000,
                                  description="write a checkpoint every N iterations (and at the end)")
    checkpoint_at_best: bool = Field(True, description="also write a checkpoint at each new best of the metric, "
                                                       "for run.py's best-K checkpoints; tune.py turns it off "
                                                       "unless set (a trial's final checkpoint holds its "
                                                       "selected state)")

    @field_validator("schedule_kwargs")
    @classmethod
    def _schedule_kwargs_fit_the_schedule(cls, kwargs: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The worker passes these to torch's scheduler: a wrong name or value fails here, at the
        edge, and not in every worker after Ray has started."""
        check_schedule_kwargs(info.data.get("schedule", "none"), kwargs)
        return kwargs

    def check_files(self) -> None:
        """Check files named by the config (exist, parse); algorithms with files override this."""


def _integer_at_least(low: int):
    return f"an integer >= {low}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(text: str, test):
    def accepts(value: Any) -> bool:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value) and test(value)
    return text, accepts


def _one_of(*choices: str):
    return "one of " + ", ".join(choices), lambda v: v in choices


# the keyword arguments of each torch schedule that make_scheduler builds (last_epoch is left
# out: the checkpoint restores the schedule's position), with the values torch accepts
SCHEDULE_ARGUMENTS: dict[str, dict[str, tuple[str, Any]]] = {
    "none": {},
    "step": {"step_size": _integer_at_least(1), "gamma": _number("a number > 0", lambda v: v > 0)},
    "plateau": {"mode": _one_of("min", "max"), "factor": _number("a number in (0, 1)", lambda v: 0 < v < 1),
                "patience": _integer_at_least(0), "threshold": _number("a number >= 0", lambda v: v >= 0),
                "threshold_mode": _one_of("rel", "abs"), "cooldown": _integer_at_least(0),
                "min_lr": _number("a number >= 0", lambda v: v >= 0),
                "eps": _number("a number >= 0", lambda v: v >= 0)},
    "cosine": {"T_max": _integer_at_least(1), "eta_min": _number("a number >= 0", lambda v: v >= 0)},
    "cosine_warm_restarts": {"T_0": _integer_at_least(1), "T_mult": _integer_at_least(1),
                             "eta_min": _number("a number >= 0", lambda v: v >= 0)},
}


def check_schedule_kwargs(schedule: str, kwargs: dict[str, Any]) -> None:
    allowed = SCHEDULE_ARGUMENTS.get(schedule, {})
    for name, value in kwargs.items():
        if name not in allowed:
            takes = f"takes {', '.join(allowed)}" if allowed else "takes no arguments"
            raise ValueError(f"{name!r} is not an argument of schedule {schedule!r} (it {takes})")
        wanted, accepts = allowed[name]
        if not accepts(value):
            raise ValueError(f"{name} = {value!r}: schedule {schedule!r} needs {wanted}")


def parse_set_value(text: str) -> Any:
    """`--set key=value`: the value is read as YAML, so numbers, bools and lists get their type."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 as a string; people mean the number
            return float(value)
        except ValueError:
            return value
    return value


def overrides_from_sets(pairs: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        overrides[key] = parse_set_value(value)
    return overrides


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first_line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, got {type(data).__name__}")
    return data


def build_config(config_cls: type[TrainerConfig], values: dict[str, Any]) -> TrainerConfig:
    """Validate `values` against `config_cls`; a ConfigError names the first wrong field."""
    unknown = sorted(str(k) for k in values if k not in config_cls.model_fields)
    if unknown:
        known = ", ".join(sorted(config_cls.model_fields))
        raise ConfigError(f"unknown config key {unknown[0]!r}; known keys: {known}")
    check_fields_alone(config_cls, values)
    try:
        return config_cls(**values)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(config_cls, error)) from None
    except (TypeError, ValueError) as error:  # e.g. a nested value that breaks a validator
        raise ConfigError(str(error).splitlines()[0]) from None


def check_fields_alone(config_cls: type[TrainerConfig], values: dict[str, Any]) -> None:
    """Each given value against its own field (type, bounds) before the model's validators run:
    a validator that reads another field (a `mode="before"` one) never meets a list where it
    expects a string, and the error names the field, not "unhashable type"."""
    for key, value in values.items():
        try:
            _field_adapter(config_cls, key).validate_python(value)
        except ValidationError as error:
            raise ConfigError(describe_validation_error(config_cls, error, field=key)) from None


@functools.lru_cache(maxsize=None)
def _field_adapter(config_cls: type[BaseModel], key: str) -> TypeAdapter:
    info = config_cls.model_fields[key]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)


def describe_validation_error(config_cls: type[BaseModel], error: ValidationError, field: str | None = None) -> str:
    first = dict(error.errors()[0])
    if field is not None:  # an error of one field validated alone
        first["loc"] = (field, *first["loc"])
    # pydantic prefixes a validator's own ValueError with "Value error, "; the text says it all
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check between fields: its message names them
        return message
    field = ".".join(str(part) for part in first["loc"])
    value = first.get("input")
    # a validator's own message says what it wants; pydantic's own checks get the field's range
    allowed = "" if first["type"] == "value_error" else allowed_range(config_cls, str(first["loc"][0]))
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{field} = {shown}: {message}" + (f" (allowed: {allowed})" if allowed else "")


def allowed_range(config_cls: type[BaseModel], name: str) -> str:
    """A human description of the constraints of one field, e.g. '0 < lr <= 10'."""
    info = config_cls.model_fields.get(name)
    if info is None:
        return ""
    parts = []
    for meta in info.metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                parts.append(f"{symbol} {bound}")
    if parts:
        return f"{name} " + " and ".join(parts)
    annotation = info.annotation
    choices = getattr(annotation, "__args__", None)
    if choices and all(isinstance(c, str) for c in choices):
        return "one of " + ", ".join(choices)
    return getattr(annotation, "__name__", "")
