"""Self-validating frozen dataclasses: the machinery under every config.

``Validated.__post_init__`` checks each field against its annotation (``coerce``: int to
float, list to tuple, literals, nested dicts to dataclasses) and then the class's own
range rules, raising :class:`~less_lab.errors.ConfigError` with the key, the value and what
is allowed. Kept apart from ``config`` so that config families can live in their own
modules (``selection_config``) without an import cycle.

Base layer: imports nothing from less_lab but ``errors``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal

from less_lab.errors import ConfigError


class Validated:
    """Checks every field against its annotation when the dataclass is built, then the
    class's own range rules (``_rules``: ``(field, ok(value), what is allowed)``)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = coerce(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
        for name, ok, allowed in self._rules():
            value = getattr(self, name)
            if not ok(value):
                raise ConfigError(f"{name}={value!r}: expected {allowed}", key=name)

    def _rules(self) -> list[tuple[str, Any, str]]:
        """``(field, ok(value), what is allowed)`` checks after the type checks."""
        return []


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` wants it (int -> float, list -> tuple) or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return coerce(name, value, hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{name}={value!r}: expected one of {', '.join(map(repr, args))}", key=name
            )
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}={value!r}: expected a list", key=name)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(name, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{name}={value!r}: expected {len(args)} values", key=name)
        return tuple(coerce(name, v, a) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected true or false", key=name)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r}: expected a whole number", key=name)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}={value!r}: expected a number", key=name)
        if not math.isfinite(value):
            raise ConfigError(f"{name}={value!r}: expected a finite number", key=name)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r}: expected text", key=name)
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return from_dict(hint, value)
        if not isinstance(value, hint):
            raise ConfigError(f"{name}={value!r}: expected a {hint.__name__}", key=name)
    return value


def positive(v: Any) -> bool:
    return v > 0


def is_fraction(v: Any) -> bool:
    return 0 < v <= 1


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from ``to_dict`` output; unknown keys fail."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{cls.__name__} has no field {unknown[0]!r} (fields: {', '.join(sorted(names))})",
            key=unknown[0],
        )
    return cls(**data)  # nested dicts and lists are coerced by the field checks
