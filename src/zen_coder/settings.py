"""Overriding a settings dataclass from a recipe table or `--set key=value`, with checked types.

Every stage keeps its settings in one frozen dataclass of plain fields; this is the one place
that turns user input into field values, so every stage reports bad input the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from zen_coder.errors import ZenCoderError

Settings = TypeVar("Settings")

_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "tuple[str, ...]": tuple}
_EXPECTED = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "text",
    tuple: "a list of names (in TOML a list, on the command line comma-separated)",
}


def _coerce(label: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is tuple:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value):
            return tuple(value)
    elif isinstance(value, str):
        return value
    raise ZenCoderError(f"{label} expects {_EXPECTED[kind]}, got {value!r}")


def apply_overrides(settings: Settings, section: str, values: dict[str, Any]) -> Settings:
    """`settings` with `values` (from TOML or `--set`) applied, names and types checked.

    `section` names the settings in errors: "mine setting max_files expects an integer, ...".
    A field of another type (a nested table of settings, like `train.lora`) is not set here:
    its own section sets it.
    """
    known = {
        field.name: _TYPES[str(field.type)]
        for field in dataclasses.fields(settings)
        if str(field.type) in _TYPES
    }
    changes = {}
    for name, value in values.items():
        if name not in known:
            raise ZenCoderError(
                f"unknown {section} setting {name!r}; known settings: {', '.join(sorted(known))}"
            )
        changes[name] = _coerce(f"{section} setting {name}", known[name], value)
    return dataclasses.replace(settings, **changes)


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """Turn `key=value` strings from the command line into a dict."""
    values = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ZenCoderError(f"--set expects key=value, got {item!r}")
        values[key.strip()] = value.strip()
    return values
