"""Reading ``shards.yaml``: every value converted and checked, every problem collected.

Validation collects every problem, each as ``file:line: key: what is wrong``,
and the CLI exits 2 with all of them: an SRE fixes a file in one pass, not one
error per restart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from watcher.config.settings import (
    DEFAULT_LIMIT,
    STRATEGIES,
    Author,
    Config,
    Defaults,
    GitConfig,
    Limit,
    RedisConfig,
    RegistryConfig,
    ServerConfig,
    parse_duration,
    parse_share,
)
from watcher.errors import ConfigError

# --- loading -----------------------------------------------------------------


class _Reader:
    """Walks a round-trip YAML tree, converting values and collecting problems."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def line(self, node: Any, key: str | int | None) -> int:
        lc = getattr(node, "lc", None)
        if lc is None:
            return 1
        try:
            if key is None:
                return int(lc.line) + 1
            if isinstance(node, CommentedMap):
                return int(lc.value(key)[0]) + 1
            if isinstance(node, CommentedSeq):
                return int(lc.item(key)[0]) + 1
        except (KeyError, IndexError, TypeError):
            pass
        return int(lc.line) + 1

    def problem(self, node: Any, key: str | int | None, path: str, why: str) -> None:
        self.problems.append(f"{self.source}:{self.line(node, key)}: {path}: {why}")

    def mapping(
        self, node: Any, path: str, allowed: set[str], parent: Any = None, key: Any = None
    ) -> CommentedMap:
        if node is None:
            return CommentedMap()
        if not isinstance(node, CommentedMap):
            self.problem(parent if parent is not None else node, key, path, "must be a mapping")
            return CommentedMap()
        for name in node:
            if not isinstance(name, str) or name not in allowed:
                known = ", ".join(sorted(allowed))
                self.problem(
                    node,
                    name,
                    f"{path}.{name}" if path else str(name),
                    f"unknown key (known: {known})",
                )
        return node

    def get(
        self,
        node: CommentedMap,
        key: str,
        path: str,
        convert: Callable[[Any], Any],
        default: Any,
    ) -> Any:
        if key not in node:
            return default
        full = f"{path}.{key}" if path else key
        try:
            return convert(node[key])
        except (ValueError, TypeError) as exc:
            self.problem(node, key, full, str(exc))
            return default


def _int(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, not {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ValueError(f"must be at least {minimum}{upper}, not {value}")
        return int(value)

    return convert


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return str(value)


def _nonempty_str(value: Any) -> str:
    text = _str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def _duration(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError(f"must be a duration such as 90s, 2m or 1h, not {value!r}")
    return parse_duration(value)


def _share(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError(f"must be a percentage such as 5%, not {value!r}")
    return parse_share(value)


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        # YAML 1.1 readers take an unquoted `off` for false; accept it as "off".
        if value is False and "off" in choices:
            return "off"
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return convert


def _globs(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of globs")
    globs = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"every glob must be a non-empty string, not {item!r}")
        globs.append(str(item))
    return tuple(globs)


def load_text(
    text: str, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate a ``shards.yaml`` text; raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{source}:{line}: (yaml): {exc.problem or exc}"]) from None
    except YAMLError as exc:
        raise ConfigError([f"{source}:1: (yaml): {exc}"]) from None
    except RecursionError:
        # ruamel recurses once per nesting level; a traceback is not an error message.
        raise ConfigError([f"{source}:1: (yaml): the YAML nests too deeply to be read"]) from None
    r = _Reader(source)
    top = r.mapping(
        root,
        "",
        {"shards", "interval", "redis", "limits", "registries", "git", "defaults", "server"},
    )
    if root is not None and not isinstance(root, CommentedMap):
        raise ConfigError(r.problems)

    shards = r.get(top, "shards", "", _int(1, 65536), 16)
    interval = r.get(top, "interval", "", _duration, 120.0)

    redis_node = r.mapping(top.get("redis"), "redis", {"url"}, top, "redis")
    redis = RedisConfig(
        url=r.get(redis_node, "url", "redis", lambda v: "" if v is None else _str(v), "")
    )

    limits: dict[str, Limit] = {}
    limits_node = top.get("limits")
    if limits_node is not None and not isinstance(limits_node, CommentedMap):
        r.problem(top, "limits", "limits", "must be a mapping of budget names")
    elif limits_node is not None:
        for name, node in limits_node.items():
            path = f"limits.{name}"
            if not isinstance(name, str) or not name:
                r.problem(limits_node, name, path, "budget names must be non-empty strings")
                continue
            m = r.mapping(node, path, {"requests", "per", "headroom"}, limits_node, name)
            limits[name] = Limit(
                name=name,
                requests=r.get(m, "requests", path, _int(1), 10_000),
                per=r.get(m, "per", path, _duration, 600.0),
                headroom=r.get(m, "headroom", path, _share, 0.05),
            )
    if DEFAULT_LIMIT not in limits:
        limits[DEFAULT_LIMIT] = Limit()

    registries: list[RegistryConfig] = []
    reg_node = top.get("registries")
    if reg_node is not None and not isinstance(reg_node, CommentedSeq):
        r.problem(top, "registries", "registries", "must be a list")
    elif reg_node is not None:
        allowed = {
            "host",
            "api",
            "auth",
            "limit",
            "insecure",
            "username_env",
            "password_env",
            "config",
            "timeout",
        }
        for index, node in enumerate(reg_node):
            path = f"registries[{index}]"
            m = r.mapping(node, path, allowed, reg_node, index)
            if isinstance(node, CommentedMap) and "host" not in m:
                r.problem(reg_node, index, f"{path}.host", "is required")
            registry = RegistryConfig(
                host=r.get(m, "host", path, _nonempty_str, "*"),
                api=r.get(m, "api", path, _choice("google", "v2"), "v2"),
                auth=r.get(
                    m,
                    "auth",
                    path,
                    _choice("google", "anonymous", "basic", "dockerconfig"),
                    "anonymous",
                ),
                limit=r.get(m, "limit", path, _nonempty_str, DEFAULT_LIMIT),
                insecure=r.get(m, "insecure", path, _bool, False),
                username_env=r.get(m, "username_env", path, _nonempty_str, None),
                password_env=r.get(m, "password_env", path, _nonempty_str, None),
                config=r.get(m, "config", path, _nonempty_str, None),
                timeout=r.get(m, "timeout", path, _duration, 30.0),
            )
            if "limit" in m and registry.limit not in limits:
                r.problem(
                    m,
                    "limit",
                    f"{path}.limit",
                    f"names no budget under limits: (known: {', '.join(sorted(limits))})",
                )
            if registry.auth == "basic" and not (registry.username_env and registry.password_env):
                r.problem(
                    reg_node, index, f"{path}.auth", "basic needs username_env and password_env"
                )
            if registry.auth == "dockerconfig" and not registry.config:
                r.problem(
                    reg_node,
                    index,
                    f"{path}.auth",
                    "dockerconfig needs config: the path of a config.json",
                )
            registries.append(registry)

    git_node = r.mapping(
        top.get("git"),
        "git",
        {"url", "branches", "files", "author", "workdir", "timeout"},
        top,
        "git",
    )
    author_node = r.mapping(
        git_node.get("author"), "git.author", {"name", "email"}, git_node, "author"
    )
    git = GitConfig(
        url=r.get(git_node, "url", "git", _str, ""),
        branches=r.get(git_node, "branches", "git", _globs, GitConfig.branches),
        files=r.get(git_node, "files", "git", _globs, GitConfig.files),
        author=Author(
            name=r.get(author_node, "name", "git.author", _nonempty_str, Author.name),
            email=r.get(author_node, "email", "git.author", _nonempty_str, Author.email),
        ),
        workdir=r.get(git_node, "workdir", "git", _str, ""),
        timeout=r.get(git_node, "timeout", "git", _duration, 60.0),
    )
    if environ.get("WATCHER_GIT_URL"):
        git = replace(git, url=environ["WATCHER_GIT_URL"])
    if not git.url:
        line = r.line(top, "git") if "git" in top else 1
        r.problems.append(f"{source}:{line}: git.url: is required (or set WATCHER_GIT_URL)")
    if environ.get("WATCHER_REDIS_URL"):
        redis = RedisConfig(url=environ["WATCHER_REDIS_URL"])

    defaults_node = r.mapping(top.get("defaults"), "defaults", {"strategy"}, top, "defaults")
    defaults = Defaults(
        strategy=r.get(defaults_node, "strategy", "defaults", _choice(*STRATEGIES), "digest")
    )
    server_node = r.mapping(top.get("server"), "server", {"port"}, top, "server")
    server = ServerConfig(port=r.get(server_node, "port", "server", _int(0, 65535), 8080))

    if r.problems:
        raise ConfigError(r.problems)
    return Config(
        shards=shards,
        interval=interval,
        redis=redis,
        limits=limits,
        registries=tuple(registries),
        git=git,
        defaults=defaults,
        server=server,
        source=source,
    )


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}:0: (file): cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{source}:0: (file): not UTF-8 text"]) from None
    return load_text(text, source, environ)
