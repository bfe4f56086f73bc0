"""The configuration as the daemon uses it: frozen dataclasses, a default on every field.

Every concern gets one frozen dataclass, so a minimal file (just ``git.url``)
is a working configuration. The loader (:mod:`watcher.config.loader`) takes
its defaults from these fields, its known keys from their names and its
choices from the ``Literal`` types, so each is written once, here. A field's
docstring is what ``shards.yaml`` documents for its key.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from watcher.gitops.paths import clone_name, matches_any

Strategy = Literal["digest", "newest", "semver", "lexical", "follow", "off"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
Holds = Literal["until-new-build", "until-released"]
HOLDS: tuple[Holds, ...] = get_args(Holds)
Api = Literal["google", "v2"]
Auth = Literal["google", "anonymous", "basic", "dockerconfig"]
SigningFormat = Literal["ssh", "openpgp"]
SIGNING_FORMATS: tuple[SigningFormat, ...] = get_args(SigningFormat)

DEFAULT_LIMIT = "default"
"""The budget a registry entry without ``limit`` draws from (always defined)."""


@dataclass(frozen=True)
class Limit:
    """A named request budget (``limits.<name>``): a hard cap over a sliding window."""

    name: str = DEFAULT_LIMIT
    """The key under ``limits:``."""
    requests: int = 10_000
    """The registry's quota: requests allowed per window (GCR: 10,000 per 10 minutes)."""
    per: float = 600.0
    """The window, in seconds (``10m``)."""
    headroom: float = 0.05
    """Share of the quota never used (``5%``): room for the gap between grant and send,
    and for a replica cut off from Redis."""

    @property
    def cap(self) -> int:
        """Requests allowed in any window of ``per`` seconds."""
        return max(1, int(self.requests * (1 - self.headroom)))


@dataclass(frozen=True)
class RegistryConfig:
    """How to talk to the registries whose host matches ``host`` (``registries[]``)."""

    host: str = "*"
    """An exact host, or a glob such as ``*.gcr.io`` or ``*-docker.pkg.dev``."""
    api: Api = "v2"
    """``google``: GCR / Artifact Registry (one tags/list answers everything);
    ``v2``: any OCI registry."""
    auth: Auth = "anonymous"
    """``google`` (Application Default Credentials), ``anonymous``, ``basic``
    (``username_env``/``password_env``) or ``dockerconfig`` (``config``)."""
    limit: str = DEFAULT_LIMIT
    """The budget (key under ``limits:``) its requests draw from."""
    insecure: bool = False
    """Plain http (local registries, tests)."""
    username_env: str | None = None
    """``basic``: the environment variable holding the user name."""
    password_env: str | None = None
    """``basic``: the environment variable holding the password."""
    config: str | None = None
    """``dockerconfig``: the path of a ``config.json``."""
    timeout: float = 30.0
    """A request taking longer is abandoned (and retried, within the budget)."""

    def matches(self, host: str) -> bool:
        return fnmatch.fnmatchcase(host.lower(), self.host.lower())


@dataclass(frozen=True)
class Author:
    """Who the watcher's own commits are by (``git.author``)."""

    name: str = "image-watcher"
    email: str = "image-watcher@localhost"


@dataclass(frozen=True)
class Keys:
    """Which keys of a values mapping hold what (``git.keys``), for charts with their own
    names. Each is a list of key names, tried in order; an image block needs a
    non-empty ``repository`` and ``tag`` (the first of their names a mapping has with a
    non-empty value)."""

    registry: tuple[str, ...] = ("registry",)
    """The registry host the chart puts in front of ``repository`` (``registry/repository``),
    when the mapping has one with a non-empty value (Bitnami, kube-prometheus-stack,
    Grafana's and many other charts)."""
    registry_override: tuple[str, ...] = ("global.imageRegistry",)
    """Dotted key paths from a document's root whose non-empty value replaces every
    block's registry, as Bitnami's, kube-prometheus-stack's and Grafana's templates do
    with ``global.imageRegistry``."""
    registry_fallback: tuple[str, ...] = ()
    """Dotted key paths from a document's root whose non-empty value is the registry of
    blocks that name none, as ingress-nginx's templates do with ``global.image.registry``
    (none by default: Loki's and Tempo's charts read that same key as an override)."""
    repository: tuple[str, ...] = ("repository",)
    """The image name. ``[repository, image]`` also reads ingress-nginx's and Traefik's
    ``{registry, image, tag, digest}`` blocks."""
    tag: tuple[str, ...] = ("tag",)
    """The tag to follow."""
    digest: tuple[str, ...] = ("digest", "sha", "shasum")
    """Where the digest of the followed tag goes (the key the chart reads): the first of
    these the block has; a block with none of them gets the last."""
    hex: tuple[str, ...] = ("sha",)
    """Digest keys the chart prefixes with ``sha256:`` itself (kube-prometheus-stack's and
    Grafana's ``sha``): written as the 64 hex digits alone."""


@dataclass(frozen=True)
class Signing:
    """How every commit the watcher makes is signed (``git.signing``); both keys required."""

    format: SigningFormat
    """``ssh`` (git's SSH signing, ``ssh-keygen -Y sign``) or ``openpgp`` (``gpg``)."""
    key: str
    """``ssh``: the path of the private key file (no passphrase), made absolute as the
    file loads; ``openpgp``: a key id or fingerprint whose secret key ``gpg`` holds
    (in ``GNUPGHOME``, else ``~/.gnupg``), usable without a passphrase prompt."""


@dataclass(frozen=True)
class GitConfig:
    """The GitOps remote (``git``)."""

    url: str = ""
    """Any git URL (``git@...``, ``https://...``, ``file://`` or a path); required.
    ``WATCHER_GIT_URL`` overrides it."""
    branches: tuple[str, ...] = ("environment/*",)
    """Globs of the branches that are environments."""
    files: tuple[str, ...] = ("apps/*/values.yaml", "values.yaml")
    """Globs of the files that hold image blocks (``*`` within a folder, ``**`` across)."""
    author: Author = field(default_factory=Author)
    """The author and committer of the watcher's commits."""
    workdir: str = ""
    """Where the clone is kept between cycles (fetched, never re-cloned); empty: one
    clone per remote under the cache directory, named from the URL (no credentials)."""
    timeout: float = 60.0
    """A fetch or push taking longer is killed (and retried next cycle)."""
    keys: Keys = field(default_factory=Keys)
    """Key names for charts with their own (``digest``, ``sha``, ``image``...)."""
    strings: tuple[str, ...] = ()
    """Globs of key paths (``**/image``, ``**/*_image``) whose string values are image
    references, ``repo:tag`` or ``repo:tag@sha256:...``, to follow as blocks; none by
    default."""
    signing: Signing | None = None
    """How the watcher's commits are signed (the daemon's and the people's commands');
    absent: unsigned. A key that cannot sign is a configuration error at start."""


@dataclass(frozen=True)
class RedisConfig:
    """The Redis every replica shares (``redis``)."""

    # Out of repr: the URL may carry a password, and a config is the kind of
    # object that ends up printed in a debugging session or an error.
    url: str = field(default="", repr=False)
    """``redis://``, ``rediss://`` (TLS) or ``unix://``, with any user and password in it
    (``redis://user:secret@host:6379/0``); empty: an in-process budget and one replica.
    ``WATCHER_REDIS_URL`` overrides it."""
    cluster: bool = False
    """A Redis Cluster (Memorystore cluster mode): the client follows the slot map, and
    every script goes to the node owning its keys' hash tag. ``url`` names any one node."""
    ca_file: str = ""
    """A PEM bundle of the CAs that sign a ``rediss://`` server's certificate; empty:
    the system's CAs."""


@dataclass(frozen=True)
class Defaults:
    """Policy for blocks whose ``watch`` leaves a key out (``defaults``)."""

    strategy: Strategy = "digest"
    """The strategy of a block without ``watch.strategy``."""
    holds: Holds = "until-new-build"
    """How long a person's change to a value the watcher manages (a revert of its
    commit, a hand edit, ``watcher rollback``) holds the block: ``until-new-build``
    (the followed tag points at a build that is neither the held value nor the one
    it replaced) or ``until-released`` (``watcher release``)."""


@dataclass(frozen=True)
class Promotion:
    """One rule of ``promotions:``: the blocks of the ``to`` branches that have no
    ``watch.strategy`` of their own follow the same block on ``from``."""

    source: str = ""
    """``from``: the environment branch whose values are copied (required)."""
    to: tuple[str, ...] = ()
    """Globs of the branches that follow it (required, non-empty)."""
    after: float = 0.0
    """A value is promoted only once it has stood on ``from`` this long, counted from
    the commit that put it there (``30m``); 0: at the next discovery."""
    line: int = 0
    """Where the rule is written in the file (for messages); not a key."""

    def covers(self, branch: str) -> bool:
        """Whether ``branch`` is one of this rule's followers."""
        return branch != self.source and matches_any(self.to, branch)


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP server (``server``)."""

    port: int = 8080
    """``/metrics``, ``/healthz``, ``/readyz``, ``/`` (the status page) and
    ``/status.json``; 0: any free port."""


@dataclass(frozen=True)
class EventsConfig:
    """Registry events (``events``): Google's registries publish every push to the
    Pub/Sub topic ``gcr`` of their project; each message makes the image's owner check
    it at once. Optional: without subscriptions, polling alone finds pushes."""

    subscriptions: tuple[str, ...] = ()
    """Pull subscriptions on ``gcr`` topics, each ``projects/P/subscriptions/S``, read with
    Application Default Credentials (``PUBSUB_EMULATOR_HOST`` reaches an emulator instead)."""
    backstop: float = 600.0
    """How often images covered by events are still polled (``10m``): an image on a
    registry served with ``api: google`` whose project (the first path segment) has a
    subscription, or sent an event. A lost message costs at most this long."""

    @property
    def projects(self) -> frozenset[str]:
        """The projects the subscriptions belong to."""
        return frozenset(path.split("/")[1] for path in self.subscriptions)


@dataclass(frozen=True)
class Config:
    """The whole of ``shards.yaml``."""

    shards: int = 16
    """Logical consistent-hash slices of image names (fixed; not replicas)."""
    interval: float = 120.0
    """How often each image is checked, in seconds (``2m``)."""
    redis: RedisConfig = field(default_factory=RedisConfig)
    limits: Mapping[str, Limit] = field(default_factory=lambda: {DEFAULT_LIMIT: Limit()})
    """Named request budgets; ``default`` always exists."""
    registries: tuple[RegistryConfig, ...] = ()
    """How to reach each registry; the first entry whose host matches wins."""
    git: GitConfig = field(default_factory=GitConfig)
    defaults: Defaults = field(default_factory=Defaults)
    server: ServerConfig = field(default_factory=ServerConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    """Registry events from Pub/Sub (optional): pushes checked within seconds."""
    promotions: tuple[Promotion, ...] = ()
    """Environments that follow other environments; the first rule covering a branch wins."""
    source: str = "<defaults>"
    """The file it was read from (for messages); not a key."""

    def registry_for(self, host: str) -> RegistryConfig:
        """The first entry whose host matches; unknown hosts get plain v2 defaults."""
        for registry in self.registries:
            if registry.matches(host):
                return registry
        return RegistryConfig(host=host)

    def promotion_for(self, branch: str) -> Promotion | None:
        """The rule whose ``to`` covers ``branch``, if any (the first one written)."""
        return next((rule for rule in self.promotions if rule.covers(branch)), None)

    def limit_for(self, registry: RegistryConfig) -> Limit:
        return self.limits.get(registry.limit) or self.limits.get(DEFAULT_LIMIT) or Limit()

    @property
    def workdir(self) -> Path:
        if self.git.workdir:
            return Path(self.git.workdir)
        # One clone per remote: configs for different remotes never share a directory.
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        return Path(cache) / "image-tag-watcher" / clone_name(self.git.url)
