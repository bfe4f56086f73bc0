"""Answering a registry's ``WWW-Authenticate`` challenge, in as few requests as possible.

A registry says how it wants to be asked only by refusing a request (401 with
a challenge). The challenge is remembered per host, so later requests send a
bearer token (fetched once per scope and shared by concurrent callers) or
Basic credentials up front, and a 401 is answered once: a second refusal of
the same credentials is an error, never a loop. Authorization only ever goes
to the registry's own host, never to a storage host a redirect points at.
"""

from __future__ import annotations

from yarl import URL

from watcher.errors import BadResponse, Unauthorized
from watcher.registry.auth import (
    AnyCredentials,
    Challenge,
    TokenCache,
    parse_challenge,
    resolve_credentials,
)
from watcher.registry.transport import Kind, Response, Transport


def usable_challenge(response: Response) -> Challenge | None:
    """The challenge of a 401 if it is one we can answer (bearer or Basic)."""
    challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
    if challenge is None or challenge.scheme not in ("bearer", "basic"):
        return None
    return challenge


class Authorizer:
    """Authorized requests to one registry host, on top of its :class:`Transport`."""

    def __init__(
        self, transport: Transport, credentials: AnyCredentials, tokens: TokenCache
    ) -> None:
        self._transport = transport
        self._credentials = credentials
        self.tokens = tokens

    @property
    def host(self) -> str:
        return self._transport.host

    def remember(self, response: Response) -> None:
        """Learn the challenge of a 401 (from a ping) so the first look-up skips its own."""
        challenge = usable_challenge(response)
        if challenge is not None:
            self.tokens.remember(self.host, challenge)

    async def request(self, kind: Kind, method: str, url: URL, scope: str, accept: str) -> Response:
        """Send with auth for our host; on a 401, answer the challenge and send once more."""
        transport = self._transport
        headers = {"Accept": accept}
        sent_auth: str | None = None
        if transport.own(url):
            sent_auth = await self._up_front(scope)
            if sent_auth is not None:
                headers["Authorization"] = sent_auth
        response = await transport.send(kind, method, url, headers)
        if response.status != 401 or not transport.own(url):
            return response
        challenge = usable_challenge(response)
        if challenge is None:
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
        response = await transport.send(kind, method, url, headers)
        if response.status == 401:
            raise Unauthorized(f"{url}: registry refused our credentials", status=401, url=str(url))
        return response

    async def _up_front(self, scope: str) -> str | None:
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

    async def _token(self, scope: str, rejected: str | None) -> str:
        """A bearer token for ``scope``: cached, or one request to the realm.

        Concurrent callers wait for one fetch instead of each sending their own.
        A token the registry just ``rejected`` is not handed out again.
        """
        host, transport = self.host, self._transport
        async with self.tokens.lock(host, scope):
            cached = self.tokens.get(host, scope)
            if cached is not None and cached != rejected:
                return cached
            self.tokens.discard(host, scope)
            challenge = self.tokens.challenge(host)
            realm = challenge.realm if challenge is not None else None
            if challenge is None or not realm:
                raise Unauthorized(f"registry {host}: bearer challenge without a realm")
            url = URL(realm)
            if not url.absolute or url.scheme not in ("http", "https"):
                raise BadResponse(f"registry {host}: token realm is not an http(s) URL")
            url = url.update_query(service=challenge.service(host), scope=scope)
            headers = {"Accept": "application/json"}
            credentials = await resolve_credentials(self._credentials)
            if credentials is not None:
                headers["Authorization"] = credentials.basic_header()
            response = await transport.send("token", "GET", url, headers)
            shown = transport.shown(url)
            if response.status in (401, 403):
                raise Unauthorized(
                    f"{shown}: token endpoint refused the request ({response.status})",
                    status=response.status,
                    url=shown,
                )
            if response.status != 200:
                transport.raise_for(response)
            token, expires_in = _parse_token(response, shown)
            self.tokens.put(host, scope, token, expires_in)
            return token


def _parse_token(response: Response, url: str) -> tuple[str, float | None]:
    document = response.json_object("token answer", url)
    token = document.get("token") or document.get("access_token")
    if not isinstance(token, str) or not token:
        raise BadResponse(f"{url}: token answer without a token", url=url)
    expires_in = document.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return token, None
    return token, float(expires_in) if expires_in > 0 else None
