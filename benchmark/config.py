"""Hyper-parameter resolution: dataclass defaults <- per-benchmark-family defaults <- ``--set`` overrides."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from benchmark.errors import ClbenchError


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """Parse ``["key=value", ...]`` (each item may hold several comma-free pairs) into a dict of strings."""
    overrides: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ClbenchError(f"bad --set '{pair}': expected key=value")
        key, value = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ClbenchError(f"bad --set '{pair}': empty key")
        overrides[key] = value.strip()
    return overrides


def _convert(name: str, text: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _convert(name, text, non_none[0])
    if origin is typing.Literal:
        if text not in args:
            raise ClbenchError(f"--set {name}={text}: must be one of {', '.join(map(str, args))}")
        return text
    if origin in (tuple, list):
        items = [item for item in text.replace(";", ",").split(",") if item.strip()] if text else []
        item_type = args[0] if args else str
        values = [_convert(name, item.strip(), item_type) for item in items]
        return tuple(values) if origin is tuple else values
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ClbenchError(f"--set {name}={text}: expected a boolean (true/false)")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise ClbenchError(f"--set {name}={text}: expected {annotation.__name__}") from None
    raise ClbenchError(f"--set {name}: cannot parse a value of type {annotation}")


def resolve_hparams(config_cls: type, family_defaults: Mapping[str, Any] | None,
                    overrides: Mapping[str, str] | None) -> Any:
    """Build ``config_cls`` from its defaults, the benchmark family's defaults and string overrides.

    Unknown keys and values of the wrong type are a :class:`ClbenchError` naming the valid keys.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for key, value in (family_defaults or {}).items():
        if key not in fields:
            raise ValueError(f"{config_cls.__name__} has no field '{key}' (family defaults)")
        values[key] = value
    for key, text in (overrides or {}).items():
        if key not in fields:
            raise ClbenchError(
                f"unknown hyper-parameter '{key}' for {config_cls.__name__}; valid: {', '.join(sorted(fields))}")
        values[key] = _convert(key, text, hints[key])
    config = config_cls(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    refuse_negative_values(config)
    return config


def as_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a resolved hyper-parameter dataclass."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(config).items()}


def refuse_negative_values(config: Any) -> None:
    """No numeric field of a config is negative unless the class lists it in ``signed_fields``: the rule every
    method gets without writing it (its own ``validate`` runs first, with its own messages)."""
    signed = getattr(config, "signed_fields", frozenset())
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0 and item.name not in signed:
            raise ClbenchError(f"{item.name} must be >= 0")
