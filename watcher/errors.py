"""Every error the watcher raises on purpose, in one hierarchy.

Each class says who raises it and carries ``stage``: the ``errors_total{stage}``
label it is counted under, so the metric follows the kind of failure, not the
line that happened to catch it. Anything that is not a :class:`WatcherError`
is a bug, counted as ``internal``. Messages never carry a secret: credentials
are redacted where the error is made.
"""

from __future__ import annotations

from typing import ClassVar


class WatcherError(Exception):
    """Base of every product error."""

    stage: ClassVar[str] = "internal"


def stage_of(exc: BaseException) -> str:
    """The ``errors_total`` label for an exception: its class's stage, ``internal`` for bugs."""
    return exc.stage if isinstance(exc, WatcherError) else "internal"


# --- configuration and input -------------------------------------------------------------


class ConfigError(WatcherError):
    """``shards.yaml`` (or the environment) cannot be used; raised by :mod:`watcher.config`.

    ``problems`` are ``file:line: key: why`` lines; the CLI prints them all and exits 2.
    """

    stage = "config"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class UsageError(WatcherError):
    """A command line that cannot be carried out as written: an unknown branch, a
    ``BLOCK`` that names no block or several (the message lists the candidates), a
    value that breaks the grammar, no author for a person's commit. Raised by
    :mod:`watcher.steer.selectors` and the people's commands (:mod:`watcher.cli`);
    the CLI prints the message and exits 2."""

    stage = "usage"


class InvalidReference(WatcherError, ValueError):
    """An image name, tag or digest that breaks the OCI grammar; raised by
    :mod:`watcher.references` and the registry client before a request is built."""

    stage = "discovery"


class PolicyError(WatcherError, ValueError):
    """A block's ``watch`` mapping that cannot be used; raised by :mod:`watcher.strategies`.

    The message names the key and the fix; discovery reports it with file and line.
    """

    stage = "discovery"


class PromotionError(WatcherError):
    """A ``follow`` block that cannot follow as configured: its ``from`` is its own
    branch or no environment branch, or its sources come back to it (a cycle). Found by
    :mod:`watcher.promotion` on every new watch set; ``watcher check`` reports it with
    file and line, the daemon logs it, skips the block and counts it once."""

    stage = "promotion"


# --- git ------------------------------------------------------------------------------------


class GitError(WatcherError):
    """A git operation on the GitOps remote or the local clone failed; raised by
    :mod:`watcher.gitops`. The message never carries credentials."""

    stage = "git"


# --- registries -------------------------------------------------------------------------------


class RegistryError(WatcherError):
    """A registry request that gave no usable answer; raised by the registry client
    (:mod:`~watcher.registry.transport`, :mod:`~watcher.registry.challenge`,
    :mod:`~watcher.registry.client`, :mod:`~watcher.registry.manifests`)."""

    stage = "registry"

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None):
        super().__init__(message)
        self.status = status
        self.url = url


class NotFound(RegistryError):
    """The repository, tag, manifest or blob does not exist (404, ``*_UNKNOWN``)."""


class Unauthorized(RegistryError):
    """The registry refused our credentials, or wants some we do not have (401/403)."""


class Throttled(RegistryError):
    """429: the registry's quota is spent. The look-ups pause the shared budget."""

    def __init__(
        self, message: str, *, retry_after: float | None, status: int = 429, url: str | None = None
    ):
        super().__init__(message, status=status, url=url)
        self.retry_after = retry_after


class BadResponse(RegistryError):
    """An answer of the wrong shape: not JSON, a bad digest, a body that does not hash right."""


class RegistryUnavailable(RegistryError):
    """5xx, timeouts or connection errors on every attempt."""


class ExtensionError(RegistryError, ValueError):
    """A Google ``tags/list`` whose ``manifest`` extension cannot be read; raised by
    :mod:`watcher.registry.google`."""


class CredentialsError(WatcherError):
    """Registry credentials that are configured but cannot be used (a missing variable,
    an unreadable config.json, ADC failing); raised by :mod:`watcher.registry.auth`."""

    stage = "registry"


class LookupFailed(WatcherError):
    """One image could not be looked up this cycle; raised by
    :class:`watcher.registry.lookups.Lookups`, which turns every registry and
    credentials error of that image into this one (the cause is kept)."""

    stage = "registry"


class ImageNotFound(LookupFailed):
    """The registry says the image (or its repository) does not exist; raised by
    :class:`watcher.registry.lookups.Lookups`. Asking again changes nothing until
    someone pushes it, which a registry event announces."""


# --- the shared budget ------------------------------------------------------------------------


class BudgetUnavailable(WatcherError):
    """Redis did not answer the budget script in time; raised by :mod:`watcher.budget.script`
    and handled in :mod:`watcher.budget.shared`, which falls back on a local share of the cap."""

    stage = "budget"


class RedisUnusable(WatcherError):
    """The configured Redis answers, but never will as configured: a refused password,
    a TLS certificate no configured CA vouches for, a cluster setting that does not
    match the server. Raised at start by :func:`watcher.cluster.connection.verify`;
    the message names the Redis by host and port, never by its URL (it may hold a
    password)."""

    stage = "config"


# --- the HTTP server --------------------------------------------------------------------------


class ListenError(WatcherError):
    """``server.port`` cannot be listened on (in use, or not allowed); raised by
    :func:`watcher.server.serve` as ``watcher run`` starts."""

    stage = "server"
