"""A small typed validator for dataclass-shaped YAML.

Each scenario section is a frozen dataclass. ``build(cls, raw, path)`` turns the
mapping ``raw`` into ``cls``, rejecting unknown keys, wrong types, missing
required fields and out-of-range numbers with an :class:`InputError` that names
the dotted field and the value. Range rules live in the field's metadata:

    field(metadata=rule(gt=0, doc="..."))

Supported annotations: ``int``, ``float``, ``str``, ``bool``, ``Literal[...]``,
``X | None``, ``list[float]``, ``dict[str, object]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal

from .errors import InputError

_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def rule(*, gt=None, ge=None, le=None, lt=None, doc: str = "") -> dict:
    """Metadata for a numeric field: bounds (exclusive ``gt``/``lt``, inclusive ``ge``/``le``)."""
    return {"gt": gt, "ge": ge, "le": le, "lt": lt, "doc": doc}


def build(cls, raw: Any, path: str):
    """Validate ``raw`` against dataclass ``cls``; ``path`` names it in errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(path or "scenario", raw, f"expected a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise InputError(_join(path, str(key)), raw[key], f"unknown field (allowed: {allowed})")
    values = {}
    for name, f in fields.items():
        where = _join(path, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(where, None, "required field is missing")
            continue
        values[name] = _convert(hints[name], raw[name], where, f.metadata)
    return cls(**values)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert(tp, value, where: str, meta) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _convert(inner[0], value, where, meta)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise InputError(where, value, f"must be one of {choices}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise InputError(where, value, "expected a list")
        return tuple(_convert(args[0], v, f"{where}[{i}]", meta) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(where, value, "expected a mapping")
        for k, v in value.items():
            if not isinstance(k, str):
                raise InputError(where, k, "keys must be strings")
            if not isinstance(v, (str, int, float, bool)):
                raise InputError(f"{where}.{k}", v, "expected a number, string or boolean")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(where, value, "expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str) or not value.strip():
            raise InputError(where, value, "expected a non-empty string")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                value = int(value)
            else:
                raise InputError(where, value, "expected an integer")
        _check_range(value, where, meta)
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            value = float(value)  # PyYAML reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(where, value, "expected a number")
        try:
            value = float(value)
        except OverflowError:   # an integer beyond the largest float (about 1.8e308)
            raise InputError(where, value, "must be a finite number (too large for a float)") from None
        if not math.isfinite(value):
            raise InputError(where, value, "must be a finite number")
        _check_range(value, where, meta)
        return value
    raise TypeError(f"schema: unsupported annotation {tp!r} at {where}")  # programming error


def _check_range(value, where: str, meta) -> None:
    if not meta:
        return
    if meta.get("gt") is not None and not value > meta["gt"]:
        raise InputError(where, value, f"must be > {meta['gt']}")
    if meta.get("ge") is not None and not value >= meta["ge"]:
        raise InputError(where, value, f"must be >= {meta['ge']}")
    if meta.get("lt") is not None and not value < meta["lt"]:
        raise InputError(where, value, f"must be < {meta['lt']}")
    if meta.get("le") is not None and not value <= meta["le"]:
        raise InputError(where, value, f"must be <= {meta['le']}")
