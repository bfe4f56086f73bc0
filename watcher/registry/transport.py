"""Sending requests to one registry host: within the budget, retried, reported once.

Every request the client sends, token requests, retries and redirect hops
included, goes through :meth:`Transport.send`: it first takes one grant from
the request budget (``acquire``) and is then reported once (``on_request``),
so the count of requests a registry saw is exactly the count of reports. The
budget is the product's promise to stay under a registry's quota, so nothing
sends a request around it. This module also turns an answer that is not a
success into the registry errors of :mod:`watcher.errors`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, NoReturn

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from watcher.errors import (
    BadResponse,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    Throttled,
    Unauthorized,
)

Kind = Literal["ping", "token", "manifest_head", "manifest_get", "tags_list", "blob"]

_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"})


@dataclass(frozen=True)
class RequestRecord:
    """One request sent to a registry: what it was for and how it ended."""

    registry: str  # the registry host the client serves
    kind: Kind
    method: str
    code: int | str  # HTTP status, or the exception class name when no answer came
    elapsed: float  # seconds


@dataclass(frozen=True)
class Response:
    """An answer read whole: status, headers, body, where it came from, the next page."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL
    next_url: URL | None

    def json_object(self, what: str, url: str) -> dict[str, Any]:
        """The body as a JSON object; BadResponse naming ``what`` and ``url`` otherwise."""
        try:
            document = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise BadResponse(f"{url}: {what} is not JSON", url=url) from None
        if not isinstance(document, dict):
            raise BadResponse(f"{url}: {what} is not a JSON object", url=url)
        return document


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


class Transport:
    """HTTP to one registry host through one aiohttp session.

    ``retries`` is how many times a request is sent again after a 5xx, a
    timeout or a connection error (so at most ``1 + retries`` attempts).
    A 429 is never retried here: it pauses the whole budget (the look-ups).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        host: str,
        *,
        insecure: bool,
        acquire: Callable[[], Awaitable[None]],
        on_request: Callable[[RequestRecord], None] | None,
        retries: int,
        backoff: float,
        timeout: float,
    ) -> None:
        self.session = session
        self.host = host.lower()
        self.insecure = insecure
        self.base_url = URL(f"{'http' if insecure else 'https'}://{self.host}")
        self._acquire = acquire
        self._on_request = on_request
        self.retries = max(0, retries)
        self.backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def own(self, url: URL) -> bool:
        """Whether a URL is the registry itself (the only place our auth may go)."""
        base = self.base_url
        return (url.scheme, (url.host or "").lower(), url.port) == (
            base.scheme,
            base.host,
            base.port,
        )

    def shown(self, url: URL) -> str:
        """A URL fit for messages: storage redirects carry signatures in the query; drop it."""
        return str(url if self.own(url) else url.with_query(None).with_fragment(None))

    async def send(self, kind: Kind, method: str, url: URL, headers: Mapping[str, str]) -> Response:
        """Send, again after 5xx/timeouts/connection errors with jittered exponential back-off."""
        shown = self.shown(url)
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
                response = await self._send_once(kind, method, url, headers)
            except (TimeoutError, aiohttp.ClientError) as exc:
                if not _transient(exc):
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

    async def _send_once(
        self, kind: Kind, method: str, url: URL, headers: Mapping[str, str]
    ) -> Response:
        """One request: a budget grant first, a report after, whatever happens."""
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
                        f"{method} {self.shown(url)}: unreadable Link header", url=self.shown(url)
                    ) from None
                next_url = link.get("url") if link is not None else None
                return Response(
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

    def raise_for(self, response: Response) -> NoReturn:
        """The registry error an unwanted answer stands for (404, 401/403, anything else)."""
        status, url = response.status, self.shown(response.url)
        code, message = _error_code(response.body)
        detail = f"{code}: {message}" if code else f"HTTP {status}"
        text = f"{url}: {detail}"
        if status == 404 or code in _NOT_FOUND_CODES:
            raise NotFound(text, status=status, url=url)
        if status in (401, 403):
            raise Unauthorized(text, status=status, url=url)
        raise RegistryError(text, status=status, url=url)


def _transient(exc: TimeoutError | aiohttp.ClientError) -> bool:
    # A TLS failure will not heal on retry: it is a wrong scheme or a bad certificate.
    return not isinstance(exc, aiohttp.ClientSSLError) and isinstance(
        exc, TimeoutError | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
    )


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
