"""The Redis client every shared part uses (leases, budgets, look-up cache), and its scripts.

One client per process, with no hidden retries and timeouts shorter than a
lease renewal: the membership loop and the budget retry on their own
schedules and must get control back before a lease lapses, so the client's
own retries and back-off (by default several seconds) would only be in the way.

The same parts run on one Redis or on a Redis Cluster (``redis.cluster``):
every key a script touches carries one hash tag (:mod:`watcher.keys`), and
the cluster client sends each script to the node owning its first key's
slot, following the cluster's slot map (and MOVED answers while it changes).

:func:`verify` is the start-up check of ``watcher run`` and ``watcher once``:
what waiting cannot fix (a refused password, a certificate no CA vouches for,
a cluster setting that does not match the server) ends the command with one
line; a Redis that is merely down is left to the fallbacks (local budget,
leases kept), as it would be if it went down later.
"""

from __future__ import annotations

import asyncio
import ssl
from importlib import resources
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from watcher import keys
from watcher.config import RedisConfig
from watcher.errors import RedisUnusable
from watcher.tuning import RENEW_INTERVALS, STARTUP_CHECK

RedisClient: TypeAlias = aioredis.Redis | RedisCluster
"""What :func:`connect` returns: one Redis, or a Redis Cluster."""


class ClusterUnreachable(RedisConnectionError):
    """No node of the cluster answered (or none could tell the slot map).

    redis-py raises ``RedisClusterException``, which is not a ``RedisError``;
    as this one, the membership, the budget and the cache treat it as they
    treat a single Redis that is down.
    """


class _Cluster(RedisCluster):
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnreachable(str(exc)) from exc


def connect(url: str, interval: float, *, cluster: bool = False, ca_file: str = "") -> RedisClient:
    """A client for ``url`` whose every call fails fast instead of retrying.

    ``cluster``: a Redis Cluster client, ``url`` naming any one node.
    ``ca_file``: the CAs for a ``rediss://`` server's certificate (else the system's).
    """
    if cluster:
        return _Cluster.from_url(url, **_options(url, interval, ca_file))
    return _single(url, interval, ca_file)


def _single(url: str, interval: float, ca_file: str) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.Redis.from_url(url, **_options(url, interval, ca_file))
    return client


def _options(url: str, interval: float, ca_file: str) -> dict[str, Any]:
    timeout = max(0.1, min(5.0, interval * RENEW_INTERVALS / 2))
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if ca_file and url.lower().startswith("rediss://"):
        options["ssl_ca_certs"] = ca_file
    return options


def connect_to(settings: RedisConfig, interval: float) -> RedisClient:
    """:func:`connect` with the settings of ``redis:``."""
    return connect(settings.url, interval, cluster=settings.cluster, ca_file=settings.ca_file)


def endpoint(url: str) -> str:
    """Where ``url`` points, without its credentials: ``host:port`` or the socket path."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "unix":
        return parts.path
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port or 6379}"


async def verify(settings: RedisConfig, interval: float) -> str | None:
    """Check once that the configured Redis can be used; raise RedisUnusable if it never will.

    Returns None when Redis answered as configured, or why it could not be
    reached now (down, refusing connections, too slow): the daemon copes
    with that on its own and reaches it later.
    """
    where = endpoint(settings.url)
    # One plain connection to the named node first: it tells a bad password, a
    # bad certificate or the wrong kind of server apart from a Redis that is down.
    single = _single(settings.url, interval, settings.ca_file)
    try:
        async with asyncio.timeout(STARTUP_CHECK):
            await single.ping()
            await _check_mode(single, settings.cluster, where)
        if settings.cluster:
            clustered = connect_to(settings, interval)
            try:
                async with asyncio.timeout(STARTUP_CHECK):
                    await _check_scripts(clustered)
            finally:
                await clustered.aclose()
        else:
            async with asyncio.timeout(STARTUP_CHECK):
                await _check_scripts(single)
    except RedisUnusable:
        raise
    except (RedisError, OSError, TimeoutError) as exc:
        problem = _permanent(exc)
        if problem is not None:
            raise RedisUnusable(f"redis at {where}: {problem}") from None
        hint = ""
        if settings.url.lower().startswith("rediss://") and isinstance(
            exc, TimeoutError | RedisTimeoutError
        ):
            # A plain Redis reads a TLS hello as the start of a command and waits
            # for the rest: the handshake times out, just as on a dead network.
            hint = " (or it does not serve TLS, which looks the same to a rediss:// client)"
        return f"redis at {where}: {_describe(exc)}{hint}"
    finally:
        await single.aclose()
    return None


async def _check_mode(client: aioredis.Redis, cluster: bool, where: str) -> None:
    try:
        info = await client.info("cluster")
    except NoPermissionError:
        return  # an ACL user without INFO: the scripts' check below still runs
    enabled = bool(int(info.get("cluster_enabled", 0)))
    if enabled and not cluster:
        raise RedisUnusable(f"redis at {where} is a Redis Cluster node: set redis.cluster: true")
    if cluster and not enabled:
        raise RedisUnusable(
            f"redis at {where} is not a Redis Cluster node: set redis.cluster: false"
        )


async def _check_scripts(client: RedisClient) -> None:
    """One harmless script on the leases' slot: EVAL, TIME and key access allowed."""
    probe = client.register_script("return redis.call('TIME')[1]")
    await probe(keys=[f"{keys.SHARDS}:replicas"], args=[])


def _permanent(exc: BaseException) -> str | None:
    """Why ``exc`` will happen again on every try, or None if waiting may cure it."""
    if isinstance(exc, AuthenticationError):
        return f"authentication failed ({exc}); check the user and password in redis.url"
    if isinstance(exc, NoPermissionError):
        return f"the user lacks a permission the watcher needs ({exc})"
    cause = _ssl_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_code in _NAME_MISMATCH:
        return (
            f"its TLS certificate is for another name ({cause.verify_message}); "
            "write the host as the certificate names it in redis.url"
        )
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"its TLS certificate is not trusted ({cause.verify_message}); "
            "redis.ca_file must hold the CA that signed it"
        )
    if cause is not None:
        return f"the TLS handshake failed ({cause.reason or cause}); is it serving TLS?"
    return None


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and _IP_ADDRESS_MISMATCH: the chain is
# trusted, the name or address in redis.url is not in the certificate.
_NAME_MISMATCH = (62, 64)


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def lua_script(package: str | None, name: str) -> str:
    """A Lua script shipped beside the module that runs it (read once, at import)."""
    if package is None:
        raise ValueError(f"no package to load {name} from")
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")
