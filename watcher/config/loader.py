"""Reading ``shards.yaml``: every value converted and checked, every problem collected.

Each section is a frozen dataclass of :mod:`watcher.config.settings` and a
table of converters here, one per key: the known keys are the table's, and
an absent key takes the dataclass field's default, so defaults are written
once. Validation collects every problem, each as ``file:line: key: what is
wrong``, and the CLI exits 2 with all of them: an SRE fixes a file in one
pass, not one error per restart.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from watcher.config.convert import (
    Convert,
    boolean,
    ca_file,
    choice,
    database,
    duration,
    globs,
    integer,
    names,
    nonempty_string,
    redis_url,
    share,
    signing_key,
    string,
    subscriptions,
)
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
    Keys,
    Limit,
    Promotion,
    RedisConfig,
    RegistryConfig,
    ServerConfig,
    Signing,
)
from watcher.errors import ConfigError

T = TypeVar("T")

RegistryCheck = Callable[[RegistryConfig], str | None]
"""A check of one ``registries[]`` entry against the world (its credentials can be
read, say) that the caller knows how to make: the problem, or None. The loader
reports it at the entry's line."""

SigningCheck = Callable[[Signing], str | None]
"""A check that ``git.signing`` can sign now (the key file is there and readable, gpg
holds the key): the problem, or None. Reported at ``git.signing``'s line."""

# One converter per key a section accepts; every other field keeps its default.
TOP: dict[str, Convert] = {"shards": integer(1, 65536), "interval": duration}
LIMIT: dict[str, Convert] = {"requests": integer(1), "per": duration, "headroom": share}
REGISTRY: dict[str, Convert] = {
    "host": nonempty_string,
    "api": choice(get_args(Api)),
    "auth": choice(get_args(Auth)),
    "limit": nonempty_string,
    "insecure": boolean,
    "username_env": nonempty_string,
    "password_env": nonempty_string,
    "config": nonempty_string,
    "timeout": duration,
}
GIT: dict[str, Convert] = {
    "url": string,
    "branches": globs,
    "files": globs,
    "workdir": string,
    "timeout": duration,
    "strings": names(empty=True),
}
KEYS: dict[str, Convert] = {
    "registry": names(empty=True),
    "registry_override": names(empty=True),
    "registry_fallback": names(empty=True),
    "repository": names(),
    "tag": names(),
    "digest": names(),
    "hex": names(empty=True),
}
AUTHOR: dict[str, Convert] = {"name": nonempty_string, "email": nonempty_string}
SIGNING: dict[str, Convert] = {"format": choice(SIGNING_FORMATS), "key": signing_key}
REDIS: dict[str, Convert] = {"url": redis_url, "cluster": boolean, "ca_file": ca_file}
# `follow` needs a `from`, which only a block or a rule of `promotions:` can say.
DEFAULTS: dict[str, Convert] = {
    "strategy": choice(tuple(s for s in STRATEGIES if s != "follow")),
    "holds": choice(HOLDS),
}
PROMOTION: dict[str, Convert] = {"from": nonempty_string, "to": globs, "after": duration}
SERVER: dict[str, Convert] = {"port": integer(0, 65535)}
EVENTS: dict[str, Convert] = {"subscriptions": subscriptions, "backstop": duration}
SECTIONS = ("redis", "limits", "registries", "git", "defaults", "server", "promotions", "events")


def default(cls: type[Any], name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls``: the one place it is written."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(f"{cls.__name__} has no field {name} with a default")


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
        # A node ruamel made without a position (the empty map standing in for a
        # top level that is no mapping, as in a file holding just `=`): line 1.
        return int(lc.line) + 1 if lc.line is not None else 1

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

    def get(self, node: CommentedMap, key: str, path: str, convert: Convert, fallback: Any) -> Any:
        if key not in node:
            return fallback
        full = f"{path}.{key}" if path else key
        try:
            return convert(node[key])
        except (ValueError, TypeError) as exc:
            self.problem(node, key, full, str(exc))
            return fallback

    def values(
        self, node: CommentedMap, path: str, cls: type[Any], converters: dict[str, Convert]
    ) -> dict[str, Any]:
        """Every key of ``converters`` read from ``node``, absent ones at ``cls``'s defaults."""
        return {
            name: self.get(node, name, path, convert, default(cls, name))
            for name, convert in converters.items()
        }

    def section(
        self,
        parent: CommentedMap,
        key: str,
        cls: type[T],
        converters: dict[str, Convert],
        path: str | None = None,
    ) -> T:
        """A whole mapping section (``redis``, ``server``...) as its dataclass."""
        path = path or key
        node = self.mapping(parent.get(key), path, set(converters), parent, key)
        return cls(**self.values(node, path, cls, converters))


def _first_line(what: object) -> str:
    # ruamel's messages go on with "in <unicode string>, line 3" lines: the
    # file and line are already in front, and every problem is one line.
    return str(what).strip().splitlines()[0] if str(what).strip() else type(what).__name__


def _parse(text: str, source: str) -> Any:
    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{source}:{line}: (yaml): {_first_line(exc.problem or exc)}"]) from None
    except YAMLError as exc:
        raise ConfigError([f"{source}:1: (yaml): {_first_line(exc)}"]) from None
    except RecursionError:
        # ruamel recurses once per nesting level; a traceback is not an error message.
        raise ConfigError([f"{source}:1: (yaml): the YAML nests too deeply to be read"]) from None


def _limits(r: _Reader, top: CommentedMap) -> dict[str, Limit]:
    limits: dict[str, Limit] = {}
    node = top.get("limits")
    if node is not None and not isinstance(node, CommentedMap):
        r.problem(top, "limits", "limits", "must be a mapping of budget names")
    elif node is not None:
        for name, entry in node.items():
            path = f"limits.{name}"
            if not isinstance(name, str) or not name:
                r.problem(node, name, path, "budget names must be non-empty strings")
                continue
            m = r.mapping(entry, path, set(LIMIT), node, name)
            limits[name] = Limit(name=name, **r.values(m, path, Limit, LIMIT))
    limits.setdefault(DEFAULT_LIMIT, Limit())
    return limits


def _registries(
    r: _Reader, top: CommentedMap, limits: Mapping[str, Limit], check: RegistryCheck | None
) -> tuple[RegistryConfig, ...]:
    registries: list[RegistryConfig] = []
    node = top.get("registries")
    if node is not None and not isinstance(node, CommentedSeq):
        r.problem(top, "registries", "registries", "must be a list")
        return ()
    for index, entry in enumerate(node or ()):
        path = f"registries[{index}]"
        m = r.mapping(entry, path, set(REGISTRY), node, index)
        if isinstance(entry, CommentedMap) and "host" not in m:
            r.problem(node, index, f"{path}.host", "is required")
        registry = RegistryConfig(**r.values(m, path, RegistryConfig, REGISTRY))
        if "limit" in m and registry.limit not in limits:
            why = f"names no budget under limits: (known: {', '.join(sorted(limits))})"
            r.problem(m, "limit", f"{path}.limit", why)
        if registry.auth == "basic" and not (registry.username_env and registry.password_env):
            r.problem(node, index, f"{path}.auth", "basic needs username_env and password_env")
        if registry.auth == "dockerconfig" and not registry.config:
            why = "dockerconfig needs config: the path of a config.json"
            r.problem(node, index, f"{path}.auth", why)
        elif check is not None and (trouble := check(registry)):
            r.problem(node, index, f"{path}.auth", trouble)
        registries.append(registry)
    return tuple(registries)


def _promotions(r: _Reader, top: CommentedMap) -> tuple[Promotion, ...]:
    node = top.get("promotions")
    if node is None:
        return ()
    if not isinstance(node, CommentedSeq):
        r.problem(top, "promotions", "promotions", "must be a list of {from, to, after}")
        return ()
    rules: list[Promotion] = []
    for index, entry in enumerate(node):
        path = f"promotions[{index}]"
        m = r.mapping(entry, path, set(PROMOTION), node, index)
        if not isinstance(entry, CommentedMap):
            continue
        for key in ("from", "to"):
            if key not in m:
                r.problem(node, index, f"{path}.{key}", "is required")
        source = r.get(m, "from", path, PROMOTION["from"], default(Promotion, "source"))
        to = r.get(m, "to", path, PROMOTION["to"], default(Promotion, "to"))
        after = r.get(m, "after", path, PROMOTION["after"], default(Promotion, "after"))
        rule = Promotion(source=source, to=to, after=after, line=r.line(node, index))
        # A glob such as environment/* may match `from` too (covers() leaves it out);
        # naming it outright is a mistake.
        if source and source in to:
            why = f"names {source}, its own from: a branch cannot follow itself"
            r.problem(m, "to", f"{path}.to", why)
        for earlier in rules:
            if earlier.source and rule.covers(earlier.source) and earlier.covers(source):
                r.problem(
                    m,
                    "from",
                    f"{path}.from",
                    f"{source} and {earlier.source} follow each other "
                    f"(with {r.source}:{earlier.line}): a cycle",
                )
        rules.append(rule)
    return tuple(rules)


def _git(
    r: _Reader, top: CommentedMap, environ: Mapping[str, str], check: SigningCheck | None
) -> GitConfig:
    node = r.mapping(top.get("git"), "git", {*GIT, "author", "keys", "signing"}, top, "git")
    author = r.section(node, "author", Author, AUTHOR, "git.author")
    signing = _signing(r, node, check)
    keys = r.section(node, "keys", Keys, KEYS, "git.keys")
    roles = {"registry": keys.registry, "repository": keys.repository, "tag": keys.tag}
    roles["digest"] = keys.digest
    seen: dict[str, str] = {}
    for role, names_of_role in roles.items():
        for name in names_of_role:
            if seen.setdefault(name, role) != role:
                why = f"{name!r} is named for both {seen[name]} and {role}"
                r.problem(node.get("keys"), role, f"git.keys.{role}", why)
    git = GitConfig(
        author=author, signing=signing, keys=keys, **r.values(node, "git", GitConfig, GIT)
    )
    if environ.get("WATCHER_GIT_URL"):
        git = dataclasses.replace(git, url=environ["WATCHER_GIT_URL"])
    if not git.url:
        line = r.line(top, "git") if "git" in top else 1
        r.problems.append(f"{r.source}:{line}: git.url: is required (or set WATCHER_GIT_URL)")
    return git


def _signing(r: _Reader, git: CommentedMap, check: SigningCheck | None) -> Signing | None:
    """``git.signing``: absent or null, unsigned; otherwise both keys, and a key that signs."""
    path = "git.signing"
    if git.get("signing") is None:
        return None
    node = r.mapping(git["signing"], path, set(SIGNING), git, "signing")
    if not isinstance(git["signing"], CommentedMap):
        return None
    values = {name: r.get(node, name, path, convert, None) for name, convert in SIGNING.items()}
    for name in SIGNING:
        if name not in node:
            r.problem(git, "signing", f"{path}.{name}", f"is required ({_SIGNING_HINT})")
    if None in values.values():
        return None
    signing = Signing(**values)
    if signing.format == "ssh":
        # The watcher's git runs in the clone's directory: a relative path would
        # name a file there. It is resolved against the directory the watcher starts in.
        signing = dataclasses.replace(signing, key=os.path.abspath(Path(signing.key).expanduser()))
    if check is not None and (trouble := check(signing)):
        r.problem(git, "signing", path, trouble)
    return signing


_SIGNING_HINT = "{format: ssh, key: PATH} or {format: openpgp, key: KEYID}"


def _redis(r: _Reader, top: CommentedMap, environ: Mapping[str, str]) -> RedisConfig:
    redis = r.section(top, "redis", RedisConfig, REDIS)
    section = top.get("redis")
    has_url = isinstance(section, CommentedMap) and "url" in section
    node, key = (section, "url") if has_url else (top, "redis")
    where = "redis.url"
    if environ.get("WATCHER_REDIS_URL"):
        # Said in every message: the file may be fine and the Deployment's Secret wrong.
        where = "redis.url (from WATCHER_REDIS_URL)"
        try:
            redis = dataclasses.replace(redis, url=redis_url(environ["WATCHER_REDIS_URL"]))
        except ValueError as exc:
            r.problem(node, key, where, str(exc))
            return redis
    scheme = redis.url.partition("://")[0].lower()
    if redis.cluster and scheme == "unix":
        r.problem(node, key, where, "a Redis Cluster is reached over TCP: redis:// or rediss://")
    elif redis.cluster and redis.url and database(redis.url) != 0:
        r.problem(node, key, where, "a Redis Cluster has only database 0 (/0)")
    if redis.ca_file and scheme != "rediss":
        now = f"{scheme}://" if scheme else "empty"
        why = f"is only read with a rediss:// URL, and {where} is {now}"
        r.problem(section, "ca_file", "redis.ca_file", why)
    return redis


def load_text(
    text: str,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    *,
    check_registry: RegistryCheck | None = None,
    check_signing: SigningCheck | None = None,
) -> Config:
    """Parse and validate a ``shards.yaml`` text; raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    root = _parse(text, source)
    r = _Reader(source)
    top = r.mapping(root, "", {*TOP, *SECTIONS})
    if root is not None and not isinstance(root, CommentedMap):
        raise ConfigError(r.problems)
    scalars = r.values(top, "", Config, TOP)
    redis = _redis(r, top, environ)
    limits = _limits(r, top)
    registries = _registries(r, top, limits, check_registry)
    git = _git(r, top, environ, check_signing)
    defaults = r.section(top, "defaults", Defaults, DEFAULTS)
    server = r.section(top, "server", ServerConfig, SERVER)
    events = r.section(top, "events", EventsConfig, EVENTS)
    promotions = _promotions(r, top)
    if r.problems:
        raise ConfigError(r.problems)
    return Config(
        **scalars,
        redis=redis,
        limits=limits,
        registries=registries,
        git=git,
        defaults=defaults,
        server=server,
        events=events,
        promotions=promotions,
        source=source,
    )


def load(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    check_registry: RegistryCheck | None = None,
    check_signing: SigningCheck | None = None,
) -> Config:
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}:0: (file): cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{source}:0: (file): not UTF-8 text"]) from None
    return load_text(
        text, source, environ, check_registry=check_registry, check_signing=check_signing
    )
