"""``shards.yaml``: loaded once at start, validated, frozen.

:mod:`~watcher.config.settings` holds the frozen dataclasses (and every
default); :mod:`~watcher.config.loader` reads a file into them, reporting
every problem as ``file:line: key: what is wrong``.
"""

from watcher.config.convert import format_duration, parse_duration, parse_share
from watcher.config.loader import load, load_text
from watcher.config.settings import (
    DEFAULT_LIMIT,
    HOLDS,
    SIGNING_FORMATS,
    STRATEGIES,
    Api,
    Auth,
    Author,
    Config,
    Defaults,
    EventsConfig,
    GitConfig,
    Holds,
    Limit,
    Promotion,
    RedisConfig,
    RegistryConfig,
    ServerConfig,
    Signing,
    SigningFormat,
    Strategy,
)

__all__ = [
    "DEFAULT_LIMIT",
    "HOLDS",
    "SIGNING_FORMATS",
    "STRATEGIES",
    "Api",
    "Auth",
    "Author",
    "Config",
    "Defaults",
    "EventsConfig",
    "GitConfig",
    "Holds",
    "Limit",
    "Promotion",
    "RedisConfig",
    "RegistryConfig",
    "ServerConfig",
    "Signing",
    "SigningFormat",
    "Strategy",
    "format_duration",
    "load",
    "load_text",
    "parse_duration",
    "parse_share",
]
