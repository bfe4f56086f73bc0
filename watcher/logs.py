"""structlog set-up: one JSON object per line on stdout, with ``severity`` for Cloud Logging."""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from watcher.tuning import PROBLEM_LOG_EVERY

_SEVERITY = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
    "exception": "ERROR",
}
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization|credential", re.I)
# The whole userinfo of a URL (git remotes, Redis URLs): ``user:password@``,
# ``:password@`` and a bare token used as the user name (``https://TOKEN@host``).
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
# HTTP Authorization values quoted in messages (``Bearer <token>``, ``Basic <base64>``):
# a credential is at least 8 characters and has a digit or a symbol, which
# tells it from prose such as "basic auth needs username_env".
_AUTH_VALUES = re.compile(
    r"\b(?P<scheme>Bearer|Basic)(?P<space>\s+)"
    r"(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=])[A-Za-z0-9._~+/=-]{8,}",
    re.I,
)
REDACTED = "***"


def redact(text: str) -> str:
    """Remove credentials embedded in URLs and Authorization values quoted in text."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    return _AUTH_VALUES.sub(r"\g<scheme>\g<space>***", text)


def _scrub(value: Any) -> Any:
    """``value`` with secrets removed, looking inside mappings, lists and tuples."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEYS.search(k) else _scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        event[key] = REDACTED if _SECRET_KEYS.search(key) else _scrub(value)
    return event


def _severity(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["severity"] = _SEVERITY.get(method, "DEFAULT")
    return event


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog (and the stdlib loggers of our dependencies) to JSON lines."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    out = stream or sys.stdout
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _severity,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the stdlib; keep them quiet unless they warn.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


def get(**context: Any) -> Any:
    return structlog.get_logger().bind(**context)


class Occasionally:
    """Lets a line about a lasting problem through at most once per ``every`` seconds.

    A condition that lasts (Redis out of reach, a degraded budget, a cache
    that fails) would otherwise log on every attempt and flood the logs.
    """

    def __init__(
        self, every: float = PROBLEM_LOG_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._every = every
        self._clock = clock
        self._last = -math.inf

    @property
    def said(self) -> bool:
        """Whether a line has gone out since it was made or last reset."""
        return self._last > -math.inf

    def due(self) -> bool:
        """True when the last line let through is ``every`` seconds old (and counts this one)."""
        now = self._clock()
        if now - self._last < self._every:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        """A new occurrence of the problem: its first line goes out at once."""
        self._last = -math.inf
