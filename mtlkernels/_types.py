"""Type checks of settings read from TOML files and flags: a value must have the type of its
default (a bool is a bool, not the string "false"; an int is not a bool; a float is finite)."""
from __future__ import annotations

import dataclasses
import math


def check_value(name: str, value, default, error: type[Exception] = ValueError) -> None:
    """Raises ``error`` naming ``name`` when ``value`` does not have the type of ``default``
    (a None default takes None or a string)."""
    if default is None or isinstance(default, str):
        ok, kind = isinstance(value, str) or (default is None and value is None), "a string"
    elif isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        kind = "a finite number"
    elif isinstance(default, (list, tuple)):
        ok, kind = isinstance(value, (list, tuple)), "a list"
    elif isinstance(default, dict):
        ok, kind = isinstance(value, dict), "a table"
    else:
        return
    if not ok:
        raise error(f"{name} must be {kind}, got {value!r}")


def check_fields(obj, prefix: str, error: type[Exception] = ValueError, *, dashes: bool = False) -> None:
    """``check_value`` for every field of a dataclass instance against its default."""
    for f in dataclasses.fields(obj):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        label = f.name.replace("_", "-") if dashes else f.name
        check_value(prefix + label, getattr(obj, f.name), default, error)
