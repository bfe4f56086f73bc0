"""A Docker/OCI distribution v2 API client that spends as few requests as possible.

Every request the client sends, token requests, retries and redirect hops
included, first takes one token from the request budget (``acquire``) and is
then reported once (``on_request``), so the count of requests a registry saw
is exactly the count of reports. The budget is the product's promise to stay
under a registry's quota, so nothing here sends a request around it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from watcher.config import RegistryConfig
from watcher.errors import (
    BadResponse,
    InvalidReference,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    Throttled,
    Unauthorized,
)
from watcher.references import ImageName, is_digest, is_tag
from watcher.registry.auth import (
    AnyCredentials,
    Credentials,
    TokenCache,
    parse_challenge,
    resolve_credentials,
)
from watcher.tuning import MAX_REDIRECTS

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
# Index types first: a multi-arch tag then resolves to the digest `docker pull` uses.
MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
MANIFEST_ACCEPT = ", ".join(MANIFEST_TYPES)

Kind = Literal["ping", "token", "manifest_head", "manifest_get", "tags_list", "blob"]

_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class RequestRecord:
    """One request sent to a registry: what it was for and how it ended."""

    registry: str  # the registry host the client serves
    kind: Kind
    method: str
    code: int | str  # HTTP status, or the exception class name when no answer came
    elapsed: float  # seconds


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date; None if unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL
    next_url: URL | None


class RegistryClient:
    """The v2 API of one registry host, through one aiohttp session.

    ``retries`` is how many times a request is sent again after a 5xx, a
    timeout or a connection error (so at most ``1 + retries`` attempts).
    ``tokens`` may be shared between clients so that a bearer token and a
    registry's challenge are learnt once per process.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        registry: RegistryConfig,
        host: str,
        credentials: AnyCredentials,
        acquire: Callable[[], Awaitable[None]],
        on_request: Callable[[RequestRecord], None] | None = None,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float | None = None,
        tokens: TokenCache | None = None,
    ) -> None:
        self.session = session
        self.registry = registry
        self.host = host.lower()
        self.insecure = registry.insecure
        self.base_url = URL(f"{'http' if registry.insecure else 'https'}://{self.host}")
        self._credentials = credentials
        self._acquire = acquire
        self._on_request = on_request
        self.retries = max(0, retries)
        self.backoff = backoff
        self._timeout = aiohttp.ClientTimeout(
            total=registry.timeout if timeout is None else timeout
        )
        self.tokens = tokens if tokens is not None else TokenCache()

    def __repr__(self) -> str:
        return f"RegistryClient(host={self.host!r}, insecure={self.insecure})"

    # --- public API -----------------------------------------------------------

    async def ping(self) -> None:
        """GET /v2/: reachable if it answers 200 or 401 (auth is sorted out per scope)."""
        url = self.base_url.with_path("/v2/")
        response = await self._send_retrying("ping", "GET", url, {})
        if response.status == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if challenge is not None and challenge.scheme in ("bearer", "basic"):
                # The first look-up can then skip its own 401.
                self.tokens.remember(self.host, challenge)
        elif response.status != 200:
            self._raise_for(response)

    async def digest(self, name: ImageName, tag: str) -> str:
        """The digest ``docker pull name:tag`` would use: one HEAD when the registry cooperates."""
        self._check_name(name)
        if not (is_tag(tag) or is_digest(tag)):
            raise InvalidReference(f"not a tag or digest: {tag!r}")
        url = self._url(name, f"manifests/{tag}")
        response = await self._request("manifest_head", "HEAD", url, name, MANIFEST_ACCEPT)
        if response.status != 200:
            self._raise_for(response)
        header = response.headers.get("Docker-Content-Digest")
        if header is None:
            # Some registries leave the header out; the digest is the hash of the exact bytes.
            _body, _media_type, digest = await self.manifest(name, tag)
            return digest
        if not is_digest(header):
            raise BadResponse(
                f"{url}: Docker-Content-Digest is not sha256:<64 hex>: {header[:80]!r}",
                status=response.status,
                url=str(url),
            )
        return header

    async def manifest(self, name: ImageName, reference: str) -> tuple[bytes, str, str]:
        """GET a manifest by tag or digest: (exact body bytes, media type, sha256 digest)."""
        self._check_name(name)
        if not (is_tag(reference) or is_digest(reference)):
            raise InvalidReference(f"not a tag or digest: {reference!r}")
        url = self._url(name, f"manifests/{reference}")
        response = await self._request("manifest_get", "GET", url, name, MANIFEST_ACCEPT)
        if response.status != 200:
            self._raise_for(response)
        body = response.body
        digest = sha256_digest(body)
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadResponse(f"{url}: manifest is not JSON", url=str(url)) from None
        if not isinstance(document, dict):
            raise BadResponse(f"{url}: manifest is not a JSON object", url=str(url))
        header = response.headers.get("Docker-Content-Digest")
        if header is not None and header.startswith("sha256:") and header != digest:
            raise BadResponse(
                f"{url}: body hashes to {digest}, registry says {header[:80]}", url=str(url)
            )
        if is_digest(reference) and reference != digest:
            raise BadResponse(f"{url}: body hashes to {digest}", url=str(url))
        content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        media_type = document.get("mediaType")
        if content_type in MANIFEST_TYPES or not isinstance(media_type, str):
            media_type = content_type
        if not media_type:
            raise BadResponse(f"{url}: manifest without a media type", url=str(url))
        return body, media_type, digest

    async def tag_pages(
        self, name: ImageName, page_size: int | None = 1000
    ) -> list[dict[str, Any]]:
        """Every page of ``tags/list`` as the registry sent it (Google's ``manifest`` map too).

        ``page_size`` None leaves ``n`` out of the first request.
        """
        self._check_name(name)
        first = self._url(name, "tags/list")
        url: URL | None = first if page_size is None else first.with_query(n=str(page_size))
        pages: list[dict[str, Any]] = []
        seen: set[URL] = set()
        while url is not None:
            shown = self._shown(url)
            if url in seen:
                raise BadResponse(f"{shown}: tags/list pagination loops", url=shown)
            seen.add(url)
            response = await self._request("tags_list", "GET", url, name, "application/json")
            if response.status != 200:
                self._raise_for(response)
            try:
                page = json.loads(response.body)
            except (ValueError, UnicodeDecodeError):
                raise BadResponse(f"{shown}: tags/list is not JSON", url=shown) from None
            if not isinstance(page, dict):
                raise BadResponse(f"{shown}: tags/list is not a JSON object", url=shown)
            tags = page.get("tags")
            if tags is not None and not (
                isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)
            ):
                raise BadResponse(f"{shown}: tags/list 'tags' is not a list of strings", url=shown)
            pages.append(page)
            url = response.next_url
        return pages

    async def tags(self, name: ImageName, page_size: int | None = 1000) -> list[str]:
        """Every tag of the repository, over every page, in the registry's order, once each."""
        seen: dict[str, None] = {}
        for page in await self.tag_pages(name, page_size):
            for tag in page.get("tags") or ():
                seen.setdefault(tag, None)
        return list(seen)

    async def blob(self, name: ImageName, digest: str) -> bytes:
        """A blob's bytes, checked against its digest; storage redirects never see our auth."""
        self._check_name(name)
        if not is_digest(digest):
            raise InvalidReference(f"not a digest: {digest!r}")
        url = self._url(name, f"blobs/{digest}")
        response = await self._request("blob", "GET", url, name, "*/*")
        hops = 0
        while response.status in _REDIRECTS:
            location = response.headers.get("Location")
            if not location or hops >= MAX_REDIRECTS:
                raise BadResponse(
                    f"{self._shown(response.url)}: redirect without a location or too many"
                    " redirects",
                    status=response.status,
                    url=self._shown(response.url),
                )
            hops += 1
            target = response.url.join(URL(location))
            # _request only authenticates requests to our own host.
            response = await self._request("blob", "GET", target, name, "*/*")
        if response.status != 200:
            self._raise_for(response)
        if sha256_digest(response.body) != digest:
            raise BadResponse(f"{url}: blob does not hash to its digest", url=str(url))
        return response.body

    # --- requests, auth --------------------------------------------------------

    def _check_name(self, name: ImageName) -> None:
        if name.api_host.lower() != self.host:
            raise ValueError(f"{name} is not served by registry {self.host}")

    def _url(self, name: ImageName, rest: str) -> URL:
        return self.base_url.with_path(f"/v2/{name.path}/{rest}")

    def _own(self, url: URL) -> bool:
        """Whether a URL is the registry itself (the only place our auth may go)."""
        base = self.base_url
        return (url.scheme, (url.host or "").lower(), url.port) == (
            base.scheme,
            base.host,
            base.port,
        )

    def _shown(self, url: URL) -> str:
        """A URL fit for messages: storage redirects carry signatures in the query; drop it."""
        return str(url if self._own(url) else url.with_query(None).with_fragment(None))

    @staticmethod
    def _scope(name: ImageName) -> str:
        return f"repository:{name.path}:pull"

    async def _auth_header(self, scope: str) -> str | None:
        """What to send up front: a cached token, or a token/Basic the registry asked for before."""
        challenge = self.tokens.challenge(self.host)
        if challenge is None:
            return None
        if challenge.scheme == "bearer":
            token = self.tokens.get(self.host, scope)
            if token is None:
                token = await self._token(scope, rejected=None)
            return f"Bearer {token}"
        if challenge.scheme == "basic":
            credentials = await resolve_credentials(self._credentials)
            return credentials.basic_header() if credentials is not None else None
        return None

    async def _request(
        self, kind: Kind, method: str, url: URL, name: ImageName, accept: str
    ) -> _Response:
        """Send with auth for our host; on a 401, answer the challenge and send once more."""
        scope = self._scope(name)
        headers = {"Accept": accept}
        sent_auth: str | None = None
        if self._own(url):
            sent_auth = await self._auth_header(scope)
            if sent_auth is not None:
                headers["Authorization"] = sent_auth
        response = await self._send_retrying(kind, method, url, headers)
        if response.status != 401 or not self._own(url):
            return response
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None or challenge.scheme not in ("bearer", "basic"):
            raise Unauthorized(f"{url}: 401 without a usable challenge", status=401, url=str(url))
        self.tokens.remember(self.host, challenge)
        if challenge.scheme == "bearer":
            rejected = sent_auth.removeprefix("Bearer ") if sent_auth else None
            auth = f"Bearer {await self._token(scope, rejected=rejected)}"
        else:
            credentials = await resolve_credentials(self._credentials)
            if credentials is None:
                raise Unauthorized(f"{url}: registry wants credentials", status=401, url=str(url))
            auth = credentials.basic_header()
        if auth == sent_auth:
            raise Unauthorized(f"{url}: registry refused our credentials", status=401, url=str(url))
        headers["Authorization"] = auth
        response = await self._send_retrying(kind, method, url, headers)
        if response.status == 401:
            raise Unauthorized(f"{url}: registry refused our credentials", status=401, url=str(url))
        return response

    async def _token(self, scope: str, rejected: str | None) -> str:
        """A bearer token for ``scope``: cached, or one request to the realm.

        Concurrent callers wait for one fetch instead of each sending their own.
        A token the registry just ``rejected`` is not handed out again.
        """
        async with self.tokens.lock(self.host, scope):
            cached = self.tokens.get(self.host, scope)
            if cached is not None and cached != rejected:
                return cached
            self.tokens.discard(self.host, scope)
            challenge = self.tokens.challenge(self.host)
            realm = challenge.realm if challenge is not None else None
            if challenge is None or not realm:
                raise Unauthorized(f"registry {self.host}: bearer challenge without a realm")
            url = URL(realm)
            if not url.absolute or url.scheme not in ("http", "https"):
                raise BadResponse(f"registry {self.host}: token realm is not an http(s) URL")
            url = url.update_query(service=challenge.service(self.host), scope=scope)
            headers = {"Accept": "application/json"}
            credentials = await resolve_credentials(self._credentials)
            if credentials is not None:
                headers["Authorization"] = credentials.basic_header()
            response = await self._send_retrying("token", "GET", url, headers)
            if response.status in (401, 403):
                raise Unauthorized(
                    f"{self._shown(url)}: token endpoint refused the request ({response.status})",
                    status=response.status,
                    url=self._shown(url),
                )
            if response.status != 200:
                self._raise_for(response)
            token, expires_in = self._parse_token(response, self._shown(url))
            self.tokens.put(self.host, scope, token, expires_in)
            return token

    @staticmethod
    def _parse_token(response: _Response, url: str) -> tuple[str, float | None]:
        try:
            document = json.loads(response.body)
        except (ValueError, UnicodeDecodeError):
            raise BadResponse(f"{url}: token answer is not JSON", url=url) from None
        if not isinstance(document, dict):
            raise BadResponse(f"{url}: token answer is not a JSON object", url=url)
        token = document.get("token") or document.get("access_token")
        if not isinstance(token, str) or not token:
            raise BadResponse(f"{url}: token answer without a token", url=url)
        expires_in = document.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            return token, None
        return token, float(expires_in) if expires_in > 0 else None

    async def _send_retrying(
        self, kind: Kind, method: str, url: URL, headers: Mapping[str, str]
    ) -> _Response:
        """Send, again after 5xx/timeouts/connection errors with jittered exponential back-off."""
        shown = self._shown(url)
        if url.scheme == "http" and not self.insecure:
            raise RegistryError(
                f"refusing plain http (registry {self.host} is not insecure): {shown}",
                url=shown,
            )
        if url.scheme not in ("http", "https"):
            raise RegistryError(f"refusing a non-http(s) URL: {shown}", url=shown)
        attempt = 0
        while True:
            try:
                response = await self._send(kind, method, url, headers)
            except (TimeoutError, aiohttp.ClientError) as exc:
                # A TLS failure will not heal on retry: it is a wrong scheme or a bad certificate.
                if isinstance(exc, aiohttp.ClientSSLError) or not isinstance(
                    exc, TimeoutError | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
                ):
                    raise RegistryError(
                        f"{method} {shown}: {type(exc).__name__}", url=shown
                    ) from exc
                if attempt >= self.retries:
                    raise RegistryUnavailable(
                        f"{method} {shown}: {type(exc).__name__} after {attempt + 1} attempts",
                        url=shown,
                    ) from exc
            else:
                if response.status == 429:
                    raise Throttled(
                        f"{method} {shown}: throttled (429): {_snippet(response.body)}",
                        retry_after=parse_retry_after(response.headers.get("Retry-After")),
                        url=shown,
                    )
                if response.status < 500:
                    return response
                if attempt >= self.retries:
                    raise RegistryUnavailable(
                        f"{method} {shown}: {response.status} after {attempt + 1} attempts: "
                        f"{_snippet(response.body)}",
                        status=response.status,
                        url=shown,
                    )
            delay = self.backoff * 2**attempt
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            attempt += 1

    async def _send(
        self, kind: Kind, method: str, url: URL, headers: Mapping[str, str]
    ) -> _Response:
        """One request: a budget token first, a report after, whatever happens."""
        await self._acquire()
        start = time.monotonic()
        code: int | str = "unknown"
        try:
            async with self.session.request(
                method, url, headers=headers, allow_redirects=False, timeout=self._timeout
            ) as response:
                code = response.status
                body = await response.read()
                try:
                    link = response.links.get("next")
                except ValueError:
                    # yarl refuses some Link targets (a port above 65535, ...) with a
                    # ValueError that no caller expects: it is a bad answer.
                    raise BadResponse(
                        f"{method} {self._shown(url)}: unreadable Link header", url=self._shown(url)
                    ) from None
                next_url = link.get("url") if link is not None else None
                return _Response(
                    status=response.status,
                    headers=response.headers,
                    body=body,
                    url=response.url,
                    next_url=next_url if isinstance(next_url, URL) else None,
                )
        except BaseException as exc:
            code = type(exc).__name__
            raise
        finally:
            if self._on_request is not None:
                self._on_request(
                    RequestRecord(self.host, kind, method, code, time.monotonic() - start)
                )

    def _raise_for(self, response: _Response) -> None:
        status, url = response.status, self._shown(response.url)
        code, message = _error_code(response.body)
        detail = f"{code}: {message}" if code else f"HTTP {status}"
        text = f"{url}: {detail}"
        if status == 404 or code in _NOT_FOUND_CODES:
            raise NotFound(text, status=status, url=url)
        if status in (401, 403):
            raise Unauthorized(text, status=status, url=url)
        raise RegistryError(text, status=status, url=url)


def _error_code(body: bytes) -> tuple[str | None, str]:
    """The first ``errors[].code`` and message of a distribution error body, if any."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, ""
    errors = document.get("errors") if isinstance(document, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code, message = errors[0].get("code"), errors[0].get("message")
        return (str(code) if code else None), (str(message)[:200] if message else "")
    return None, ""


def _snippet(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace").strip() or "(no body)"


__all__ = [
    "MANIFEST_ACCEPT",
    "MANIFEST_TYPES",
    "Credentials",
    "RegistryClient",
    "RequestRecord",
    "parse_retry_after",
    "sha256_digest",
]
