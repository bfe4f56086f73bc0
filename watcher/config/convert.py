"""Units and converters for ``shards.yaml`` values: durations, shares, and typed scalars.

Each converter takes a YAML value and returns the typed value, or raises
ValueError with a message that says what to write instead; the loader adds
the file, line and key.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from watcher.logs import redact

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


def signing_key(value: Any) -> str:
    """A key path or id; YAML reads an unquoted id of digits (or ``0x...``) as a number,
    which cannot be turned back into the id that was written."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError("must be a string: quote a key id, as in key: \"0x1234ABCD\"")
    return nonempty_string(value)


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


# Pub/Sub's resource names: a project id (6-30 characters, or a legacy domain-scoped
# "example.com:proj"), and a subscription name (3-255, starting with a letter).
_SUBSCRIPTION_RE = re.compile(
    r"projects/(?P<project>(?:[a-z][a-z0-9.-]*:)?[a-z][a-z0-9-]{4,28}[a-z0-9])"
    r"/subscriptions/(?P<name>[A-Za-z][A-Za-z0-9\-_.~+%]{2,254})"
)


def subscriptions(value: Any) -> tuple[str, ...]:
    """Pub/Sub subscription paths, each ``projects/P/subscriptions/S``; no duplicates."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("must be a list of projects/P/subscriptions/S")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or _SUBSCRIPTION_RE.fullmatch(item.strip()) is None:
            raise ValueError(
                f"{item!r} is not a subscription path: write projects/PROJECT/subscriptions/NAME"
            )
        if item.strip() in out:
            raise ValueError(f"{item!r} is listed twice")
        out.append(item.strip())
    return tuple(out)


def names(*, empty: bool = False) -> Convert:
    """A list of key names (one name alone is a list of one); ``empty``: none is allowed."""

    def convert(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or (not value and not empty):
            raise ValueError(f"must be a {'' if empty else 'non-empty '}list of key names")
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise ValueError(f"every key name must be a non-empty string, not {item!r}")
        return tuple(str(item) for item in value)

    return convert


REDIS_SCHEMES = ("redis", "rediss", "unix")
_REDIS_HINT = "redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or unix:///PATH"


def redis_url(value: Any) -> str:
    """A Redis URL the client can use; empty means "no Redis".

    Checked here, at load, because the client only parses it on its first
    connection, deep inside the daemon. Messages never repeat a password: a
    value without a scheme is not echoed at all (``user:secret@host`` would
    read as text), one with a scheme only with its credentials redacted.
    """
    text = optional_string(value).strip()
    if not text:
        return ""
    if "://" not in text:
        raise ValueError(f"has no scheme: write {_REDIS_HINT}")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in REDIS_SCHEMES:
        raise ValueError(f"{redact(text)}: scheme must be redis://, rediss:// (TLS) or unix://")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    query = parse_qs(parts.query, keep_blank_values=True)
    if set(query) - {"db"}:
        unknown = ", ".join(sorted(set(query) - {"db"}))
        raise ValueError(
            f"query parameters other than ?db=N are not read (found: {unknown}); "
            "TLS takes its CA from redis.ca_file"
        )
    if scheme == "unix":
        # unix:///path, or unix://:password@/path: a password, but never a host.
        if not parts.path or parts.netloc.rpartition("@")[2]:
            raise ValueError("unix:// takes an absolute socket path: unix:///run/redis.sock")
    else:
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        if not parts.hostname:
            raise ValueError(f"has no host: write {_REDIS_HINT}")
    db = _database(text)
    if not db.isdigit():
        raise ValueError(f"the database must be a number (/0, ?db=0), not {db!r}")
    return text


def _database(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    if "db" in query:
        return query["db"][0]
    # A unix:// path is the socket's; redis:// and rediss:// paths are the database.
    return "0" if parts.scheme.lower() == "unix" else parts.path.strip("/") or "0"


def database(url: str) -> int:
    """The database number a valid :func:`redis_url` selects."""
    return int(_database(url))


def ca_file(value: Any) -> str:
    """A readable PEM bundle of CA certificates (checked now, not at the first connection)."""
    path = optional_string(value).strip()
    if not path:
        return ""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    try:
        ssl.create_default_context(cafile=path)
    except PermissionError:
        raise ValueError(f"{path}: cannot read it (permission denied)") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a PEM bundle of CA certificates ({exc})") from None
    return path
