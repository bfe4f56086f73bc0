"""Registry credentials, ``WWW-Authenticate`` challenges and the bearer-token cache.

Secrets handled here (passwords, access tokens, registry tokens) never appear
in a ``repr``, a log line or an exception message: errors name the variable,
file or host that is wrong, never the value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from watcher.config import RegistryConfig
from watcher.errors import CredentialsError
from watcher.tuning import DEFAULT_TOKEN_LIFETIME

# Google's registries take an OAuth access token as the password of this user.
GOOGLE_USER = "oauth2accesstoken"
# Docker Hub is written under three names in config.json files and image names.
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or access token) for one registry."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


class TokenSource(Protocol):
    """Where ``google`` auth gets its password: an OAuth access token, fetched on demand.

    The token is used as the password of the ``oauth2accesstoken`` user. The
    implementation (google-auth Application Default Credentials) is supplied by
    the caller; it should cache and refresh the access token itself.
    """

    async def password(self) -> str: ...


# What a RegistryClient accepts: fixed credentials, a token source, or anonymous.
AnyCredentials = Credentials | TokenSource | None


async def resolve_credentials(credentials: AnyCredentials) -> Credentials | None:
    """Fixed credentials as they are; a TokenSource as ``oauth2accesstoken`` + a fresh token."""
    if credentials is None or isinstance(credentials, Credentials):
        return credentials
    return Credentials(GOOGLE_USER, await credentials.password())


def credentials_for(
    registry: RegistryConfig,
    host: str,
    environ: Mapping[str, str] | None = None,
    *,
    token_source: TokenSource | None = None,
) -> AnyCredentials:
    """The credentials that ``registry`` (the config entry matching ``host``) says to use.

    ``anonymous``: None. ``basic``: from the environment variables the entry
    names. ``dockerconfig``: the ``auths`` entry for ``host`` in the entry's
    config.json. ``google``: the given ``token_source`` (built by the caller
    from Application Default Credentials); without one this is an error.
    """
    environ = os.environ if environ is None else environ
    if registry.auth == "anonymous":
        return None
    if registry.auth == "basic":
        return Credentials(
            _env(environ, registry.username_env, "username_env", host),
            _env(environ, registry.password_env, "password_env", host),
        )
    if registry.auth == "dockerconfig":
        if not registry.config:
            raise CredentialsError(f"registry {host}: auth dockerconfig needs config: a path")
        return _from_dockerconfig(Path(registry.config).expanduser(), host)
    if registry.auth == "google":
        if token_source is None:
            raise CredentialsError(
                f"registry {host}: auth google needs a TokenSource (google-auth access tokens)"
            )
        return token_source
    raise CredentialsError(f"registry {host}: unknown auth {registry.auth!r}")


def _env(environ: Mapping[str, str], name: str | None, key: str, host: str) -> str:
    if not name:
        raise CredentialsError(f"registry {host}: auth basic needs {key}")
    value = environ.get(name)
    if not value:
        raise CredentialsError(
            f"registry {host}: environment variable {name} ({key}) is not set or empty"
        )
    return value


def _host_key(key: str) -> str:
    """``https://Host:5000/v1/`` -> ``host:5000``: how config.json keys are compared."""
    key = key.strip().lower()
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


def _same_host(a: str, b: str) -> bool:
    a, b = _host_key(a), _host_key(b)
    return a == b or (a in _DOCKER_HUB_ALIASES and b in _DOCKER_HUB_ALIASES)


def _from_dockerconfig(path: Path, host: str) -> Credentials:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise CredentialsError(f"{path}: not a JSON docker config") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"{path}: not a JSON docker config (expected an object)")
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict) and any(_same_host(key, host) for key in helpers):
        raise CredentialsError(
            f"{path}: credHelpers entry for {host}: credential helpers are not supported; "
            "put the credentials under auths"
        )
    auths = data.get("auths")
    entry: Any = None
    if isinstance(auths, dict):
        for key, value in auths.items():
            if isinstance(key, str) and _same_host(key, host):
                entry = value
                break
    creds = _entry_credentials(entry, path, host) if isinstance(entry, dict) else None
    if creds is not None:
        return creds
    if data.get("credsStore"):
        raise CredentialsError(
            f"{path}: credsStore is not supported and auths has no credentials for {host}"
        )
    raise CredentialsError(f"{path}: no credentials for {host} under auths")


def _entry_credentials(entry: dict[str, Any], path: Path, host: str) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(f"{path}: auths[{host}].auth is not base64 user:pass") from None
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise CredentialsError(f"{path}: auths[{host}].auth is not base64 user:pass")
        return Credentials(username, password)
    user, secret = entry.get("username"), entry.get("password")
    if isinstance(user, str) and user and isinstance(secret, str):
        return Credentials(user, secret)
    if entry.get("identitytoken"):
        raise CredentialsError(
            f"{path}: auths[{host}].identitytoken (OAuth refresh tokens) is not supported"
        )
    return None


# --- WWW-Authenticate ------------------------------------------------------------

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*({_QUOTED}|{_TOKEN})\s*(?:,|$)")
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


@dataclass(frozen=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge; ``scheme`` lower-case, param names too."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    def service(self, host: str) -> str:
        # Artifact Registry leaves service out; its token endpoint wants the host.
        return self.params.get("service") or host


def parse_challenge(header: str) -> Challenge | None:
    """Parse the first challenge of a ``WWW-Authenticate`` value; None if it is unreadable.

    Handles ``Bearer realm="...",service="...",scope="..."`` and
    ``Basic realm="..."``: quoted strings with backslash escapes, bare tokens,
    extra spaces, any case of scheme and parameter names.
    """
    match = _SCHEME_RE.match(header or "")
    if match is None:
        return None
    scheme = match[1].lower()
    params: dict[str, str] = {}
    pos = match.end()
    while pos < len(header):
        param = _PARAM_RE.match(header, pos)
        if param is None:
            # Either junk or the start of a second challenge: keep what we have.
            break
        value = param[2]
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.setdefault(param[1].lower(), value)
        pos = param.end()
    return Challenge(scheme, params)


# --- token cache -----------------------------------------------------------------


def token_margin(lifetime: float) -> float:
    """How long before expiry a token is replaced: 10 %, at least 5 s, at most half its life."""
    return max(0.1 * lifetime, min(5.0, 0.5 * lifetime))


@dataclass
class _Token:
    value: str = field(repr=False)
    valid_until: float


class TokenCache:
    """Bearer tokens per (registry host, scope), and what each registry asked for.

    Expiry is measured on the local monotonic clock from when the token
    arrived: a token endpoint's ``issued_at`` is another machine's clock and
    only ever makes the token look younger than it is. Share one cache among
    the clients of a process so one token serves every shard.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._challenges: dict[str, Challenge] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"TokenCache(tokens={len(self._tokens)}, registries={sorted(self._challenges)})"

    def get(self, host: str, scope: str) -> str | None:
        token = self._tokens.get((host, scope))
        if token is None:
            return None
        if self._clock() >= token.valid_until:
            del self._tokens[(host, scope)]
            return None
        return token.value

    def put(self, host: str, scope: str, token: str, expires_in: float | None = None) -> None:
        lifetime = DEFAULT_TOKEN_LIFETIME if expires_in is None else float(expires_in)
        valid_until = self._clock() + lifetime - token_margin(lifetime)
        self._tokens[(host, scope)] = _Token(token, valid_until)

    def lock(self, host: str, scope: str) -> asyncio.Lock:
        """Held while fetching a token, so concurrent look-ups wait for one fetch."""
        return self._locks.setdefault((host, scope), asyncio.Lock())

    def discard(self, host: str, scope: str) -> None:
        self._tokens.pop((host, scope), None)

    def challenge(self, host: str) -> Challenge | None:
        """The challenge this registry sent last (so later requests skip the 401)."""
        return self._challenges.get(host)

    def remember(self, host: str, challenge: Challenge) -> None:
        self._challenges[host] = challenge
