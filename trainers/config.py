"""Typed, validated configuration shared by every algorithm.

Configs are pydantic models: a wrong value fails at the edge (the command line), before Ray
starts, with the field name and the allowed range. This module imports no torch so that the
command line can validate in milliseconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    checkpoint_every: int = Field(1, ge=1, le=1_000_000, description="write a checkpoint every N iterations")

    def check_files(self) -> None:
        """Check files named by the config (exist, parse); algorithms with files override this."""


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
    try:
        return config_cls(**values)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(config_cls, error)) from None
    except (TypeError, ValueError) as error:  # e.g. a nested value that breaks a validator
        raise ConfigError(str(error).splitlines()[0]) from None


def describe_validation_error(config_cls: type[BaseModel], error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "config"
    value = first.get("input")
    allowed = allowed_range(config_cls, str(first["loc"][0])) if first["loc"] else ""
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    message = first["msg"]
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
