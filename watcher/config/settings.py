"""The configuration as the daemon uses it: frozen dataclasses, a default on every field.

Every concern gets one frozen dataclass, so a minimal file (just ``git.url``)
is a working configuration. The loader (:mod:`watcher.config.loader`) takes
its defaults from these fields and its choices from the ``Literal`` types, so
each default is written once, here.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Strategy = Literal["digest", "newest", "semver", "lexical", "off"]
STRATEGIES: tuple[Strategy, ...] = ("digest", "newest", "semver", "lexical", "off")
Api = Literal["google", "v2"]
Auth = Literal["google", "anonymous", "basic", "dockerconfig"]

DEFAULT_LIMIT = "default"

_DURATION_RE = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SHARE_RE = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)%")




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


@dataclass(frozen=True)
class Limit:
    """A named request budget: a hard cap over a sliding window."""

    name: str = DEFAULT_LIMIT
    requests: int = 10_000
    per: float = 600.0
    headroom: float = 0.05

    @property
    def cap(self) -> int:
        """Requests allowed in any window of ``per`` seconds."""
        return max(1, int(self.requests * (1 - self.headroom)))


@dataclass(frozen=True)
class RegistryConfig:
    """How to talk to the registries whose host matches ``host`` (exact or glob)."""

    host: str = "*"
    api: Api = "v2"
    auth: Auth = "anonymous"
    limit: str = DEFAULT_LIMIT
    insecure: bool = False
    username_env: str | None = None
    password_env: str | None = None
    config: str | None = None  # dockerconfig: path to a config.json
    timeout: float = 30.0

    def matches(self, host: str) -> bool:
        return fnmatch.fnmatchcase(host.lower(), self.host.lower())


@dataclass(frozen=True)
class Author:
    name: str = "image-watcher"
    email: str = "image-watcher@localhost"


@dataclass(frozen=True)
class GitConfig:
    url: str = ""
    branches: tuple[str, ...] = ("environment/*",)
    files: tuple[str, ...] = ("apps/*/values.yaml", "values.yaml")
    author: Author = field(default_factory=Author)
    # Where the clone is kept between cycles (fetched, never re-cloned).
    workdir: str = ""
    # A fetch or push taking longer is killed (and retried next cycle).
    timeout: float = 60.0


@dataclass(frozen=True)
class RedisConfig:
    url: str = ""


@dataclass(frozen=True)
class Defaults:
    strategy: Strategy = "digest"


@dataclass(frozen=True)
class ServerConfig:
    port: int = 8080


@dataclass(frozen=True)
class Config:
    shards: int = 16
    interval: float = 120.0
    redis: RedisConfig = field(default_factory=RedisConfig)
    limits: Mapping[str, Limit] = field(default_factory=lambda: {DEFAULT_LIMIT: Limit()})
    registries: tuple[RegistryConfig, ...] = ()
    git: GitConfig = field(default_factory=GitConfig)
    defaults: Defaults = field(default_factory=Defaults)
    server: ServerConfig = field(default_factory=ServerConfig)
    source: str = "<defaults>"

    def registry_for(self, host: str) -> RegistryConfig:
        """The first entry whose host matches; unknown hosts get plain v2 defaults."""
        for registry in self.registries:
            if registry.matches(host):
                return registry
        return RegistryConfig(host=host)

    def limit_for(self, registry: RegistryConfig) -> Limit:
        return self.limits.get(registry.limit) or self.limits.get(DEFAULT_LIMIT) or Limit()

    @property
    def workdir(self) -> Path:
        if self.git.workdir:
            return Path(self.git.workdir)
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        return Path(cache) / "image-tag-watcher"
