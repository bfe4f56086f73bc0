"""The registry API operations a look-up needs: digest, manifest, tag pages, blob.

Each operation is one or a few requests to the Docker/OCI distribution v2 API
of one registry host, and checks what comes back (digests against bytes,
JSON shapes, pagination loops). How a request is sent (budget grant, retries,
report) is :mod:`watcher.registry.transport`; how a 401 is answered is
:mod:`watcher.registry.challenge`; what the documents mean is
:mod:`watcher.registry.manifests`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from watcher.config import RegistryConfig
from watcher.errors import BadResponse, InvalidReference
from watcher.references import ImageName, is_digest, is_tag
from watcher.registry.auth import AnyCredentials, TokenCache
from watcher.registry.challenge import Authorizer
from watcher.registry.manifests import MANIFEST_ACCEPT, MANIFEST_TYPES, sha256_digest
from watcher.registry.transport import Kind, RequestRecord, Response, Transport
from watcher.tuning import MAX_REDIRECTS

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


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
        self.registry = registry
        self._transport = Transport(
            session,
            host,
            insecure=registry.insecure,
            acquire=acquire,
            on_request=on_request,
            retries=retries,
            backoff=backoff,
            timeout=registry.timeout if timeout is None else timeout,
        )
        self.host = self._transport.host
        self.insecure = registry.insecure
        self.base_url = self._transport.base_url
        self._auth = Authorizer(
            self._transport, credentials, tokens if tokens is not None else TokenCache()
        )

    def __repr__(self) -> str:
        return f"RegistryClient(host={self.host!r}, insecure={self.insecure})"

    async def ping(self) -> None:
        """GET /v2/: reachable if it answers 200 or 401 (auth is sorted out per scope)."""
        response = await self._transport.send("ping", "GET", self.base_url.with_path("/v2/"), {})
        if response.status == 401:
            self._auth.remember(response)
        elif response.status != 200:
            self._transport.raise_for(response)

    async def digest(self, name: ImageName, tag: str) -> str:
        """The digest ``docker pull name:tag`` would use: one HEAD when the registry cooperates."""
        url, response = await self._manifest_request("manifest_head", "HEAD", name, tag)
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
        url, response = await self._manifest_request("manifest_get", "GET", name, reference)
        body = response.body
        digest = sha256_digest(body)
        document = response.json_object("manifest", str(url))
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
            shown = self._transport.shown(url)
            if url in seen:
                raise BadResponse(f"{shown}: tags/list pagination loops", url=shown)
            seen.add(url)
            response = await self._request("tags_list", "GET", url, name, "application/json")
            if response.status != 200:
                self._transport.raise_for(response)
            page = response.json_object("tags/list", shown)
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
                shown = self._transport.shown(response.url)
                raise BadResponse(
                    f"{shown}: redirect without a location or too many redirects",
                    status=response.status,
                    url=shown,
                )
            hops += 1
            target = response.url.join(URL(location))
            # Authorization only goes to our own host, never to storage.
            response = await self._request("blob", "GET", target, name, "*/*")
        if response.status != 200:
            self._transport.raise_for(response)
        if sha256_digest(response.body) != digest:
            raise BadResponse(f"{url}: blob does not hash to its digest", url=str(url))
        return response.body

    async def _manifest_request(
        self, kind: Kind, method: str, name: ImageName, reference: str
    ) -> tuple[URL, Response]:
        """A manifest by tag or digest, answered 200 (anything else raises)."""
        self._check_name(name)
        if not (is_tag(reference) or is_digest(reference)):
            raise InvalidReference(f"not a tag or digest: {reference!r}")
        url = self._url(name, f"manifests/{reference}")
        response = await self._request(kind, method, url, name, MANIFEST_ACCEPT)
        if response.status != 200:
            self._transport.raise_for(response)
        return url, response

    def _check_name(self, name: ImageName) -> None:
        if name.api_host.lower() != self.host:
            raise ValueError(f"{name} is not served by registry {self.host}")

    def _url(self, name: ImageName, rest: str) -> URL:
        return self.base_url.with_path(f"/v2/{name.path}/{rest}")

    async def _request(
        self, kind: Kind, method: str, url: URL, name: ImageName, accept: str
    ) -> Response:
        return await self._auth.request(kind, method, url, f"repository:{name.path}:pull", accept)
