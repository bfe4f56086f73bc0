"""Units and converters for ``shards.yaml`` values: durations, shares, and typed scalars.

Each converter takes a YAML value and returns the typed value, or raises
ValueError with a message that says what to write instead; the loader adds
the file, line and key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_DURATION_RE = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SHARE_RE = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)%")

Convert = Callable[[Any], Any]


def parse_duration(text: str) -> float:
    """``90s``, ``2m``, ``10m``, ``1h`` (and ``500ms``) to seconds; anything else is an error."""
    match = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 2m, 10m, 1h)")
    seconds = float(match["n"]) * _UNITS[match["unit"]]
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def parse_share(text: str) -> float:
    """``5%`` to 0.05; only 0% up to (not including) 100%."""
    match = _SHARE_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a percentage: {text!r} (use e.g. 5%)")
    share = float(match["n"]) / 100
    if not 0 <= share < 1:
        raise ValueError(f"percentage must be at least 0% and below 100%: {text!r}")
    return share


def format_duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def integer(minimum: int, maximum: int | None = None) -> Convert:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, not {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ValueError(f"must be at least {minimum}{upper}, not {value}")
        return int(value)

    return convert


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return str(value)


def optional_string(value: Any) -> str:
    """A string, with null read as empty (``url: ~`` means "not set")."""
    return "" if value is None else string(value)


def nonempty_string(value: Any) -> str:
    text = string(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def duration(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError(f"must be a duration such as 90s, 2m or 1h, not {value!r}")
    return parse_duration(value)


def share(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError(f"must be a percentage such as 5%, not {value!r}")
    return parse_share(value)


def choice(choices: tuple[str, ...]) -> Convert:
    """One of ``choices`` (the args of a ``Literal`` type, so the list is written once)."""

    def convert(value: Any) -> str:
        # YAML 1.1 readers take an unquoted `off` for false; accept it as "off".
        if value is False and "off" in choices:
            return "off"
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return convert


def globs(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of globs")
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"every glob must be a non-empty string, not {item!r}")
        out.append(str(item))
    return tuple(out)
