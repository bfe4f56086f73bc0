"""RegistryClient against the real docker-registry, and against small aiohttp servers
for what docker-registry cannot show (paging, token auth, failures, redirects)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import DockerRegistry, free_port
from tests.test_images import skopeo, skopeo_raw
from watcher.config import RegistryConfig
from watcher.errors import (
    BadResponse,
    CredentialsError,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    Throttled,
    Unauthorized,
)
from watcher.references import ImageName
from watcher.registry.auth import Credentials, TokenCache, credentials_for, parse_challenge
from watcher.registry.client import RegistryClient
from watcher.registry.manifests import MANIFEST_TYPES
from watcher.registry.transport import RequestRecord, parse_retry_after
from watcher_testing.images import build_image, push_image, tag_image

ACCEPT = (
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)
PASSWORD = "s3cr3t-Pa55word"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Budget:
    """Stands in for the shared budget: counts tokens taken and keeps every report."""

    granted: int = 0
    records: list[RequestRecord] = field(default_factory=list)

    async def acquire(self) -> None:
        self.granted += 1

    def report(self, record: RequestRecord) -> None:
        # A report always follows a token: the count of sent requests is exact.
        assert len(self.records) < self.granted
        self.records.append(record)

    @property
    def kinds(self) -> list[tuple[str, int | str]]:
        return [(r.kind, r.code) for r in self.records]

    def clear(self) -> None:
        self.granted = 0
        self.records.clear()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # No certificate checks: the TLS test server's certificate is self-signed.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        yield session


@pytest.fixture
def budget() -> Budget:
    return Budget()


Serve = Callable[..., Awaitable[str]]


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
async def serve(tls_context: ssl.SSLContext) -> AsyncIterator[Serve]:
    """Start an aiohttp app on 127.0.0.1 (https with tls=True); returns "127.0.0.1:PORT"."""
    servers: list[TestServer] = []

    async def start(app: web.Application, tls: bool = False) -> str:
        server = TestServer(app, host="127.0.0.1", scheme="https" if tls else "http")
        await server.start_server(ssl=tls_context if tls else None)
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


def logging_app(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> tuple[web.Application, list[Seen]]:
    seen: list[Seen] = []

    async def logged(request: web.Request) -> web.StreamResponse:
        seen.append(Seen(request.method, request.path_qs, dict(request.headers)))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", logged)
    return app, seen


async def empty_ok(request: web.Request) -> web.Response:
    return web.Response()


def make_client(
    session: aiohttp.ClientSession,
    budget: Budget,
    host: str,
    *,
    insecure: bool = True,
    credentials: Any = None,
    tokens: TokenCache | None = None,
    timeout: float = 5.0,
    retries: int = 3,
) -> RegistryClient:
    registry = RegistryConfig(host=host, insecure=insecure, timeout=timeout)
    return RegistryClient(
        session,
        registry,
        host,
        credentials,
        budget.acquire,
        budget.report,
        retries=retries,
        backoff=0.001,
        tokens=tokens,
    )


def manifest_response(body: bytes, *, head: bool, with_digest: bool = True) -> web.Response:
    headers = {"Content-Type": json.loads(body)["mediaType"]}
    if with_digest:
        headers["Docker-Content-Digest"] = sha256(body)
    if head:
        headers["Content-Length"] = str(len(body))
        return web.Response(status=200, headers=headers)
    return web.Response(status=200, body=body, headers=headers)


# --- against the real docker-registry ----------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["oci", "docker", "index"])
async def test_digest_is_what_skopeo_sees_in_one_request(
    docker_registry: DockerRegistry,
    session: aiohttp.ClientSession,
    budget: Budget,
    kind: Any,
    tmp_path: Path,
) -> None:
    pushed = await push_image(
        session, docker_registry.url, "team/app", "master", kind=kind, seed="a"
    )
    raw = await skopeo_raw(docker_registry, "team/app:master")
    (tmp_path / "raw.json").write_bytes(raw)
    from_file = (await skopeo("manifest-digest", str(tmp_path / "raw.json"))).decode().strip()
    client = make_client(session, budget, docker_registry.host)
    name = ImageName(docker_registry.host, "team/app")

    digest = await client.digest(name, "master")

    assert digest == pushed == sha256(raw) == from_file
    assert budget.kinds == [("manifest_head", 200)]
    assert budget.granted == 1
    assert budget.records[0].method == "HEAD"
    assert budget.records[0].registry == docker_registry.host


@pytest.mark.integration
async def test_index_digest_is_the_index_not_a_platform(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, budget: Budget
) -> None:
    image = build_image("index", "multi")
    await push_image(session, docker_registry.url, "multi", "v1", kind="index", seed="multi")
    client = make_client(session, budget, docker_registry.host)
    name = ImageName(docker_registry.host, "multi")

    assert await client.digest(name, "v1") == image.digest
    body, media_type, digest = await client.manifest(name, "v1")
    assert (body, media_type, digest) == (image.top.body, image.top.media_type, image.digest)
    child = image.manifests[0]
    assert await client.manifest(name, child.digest) == (child.body, child.media_type, child.digest)
    assert await client.digest(name, child.digest) == child.digest
    assert [kind for kind, _ in budget.kinds] == [
        "manifest_head",
        "manifest_get",
        "manifest_get",
        "manifest_head",
    ]


@pytest.mark.integration
async def test_manifest_get_and_blob(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, budget: Budget
) -> None:
    created = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    await push_image(
        session, docker_registry.url, "svc", "v2", kind="docker", seed="b", created=created
    )
    client = make_client(session, budget, docker_registry.host)
    name = ImageName(docker_registry.host, "svc")

    body, media_type, digest = await client.manifest(name, "v2")
    assert body == await skopeo_raw(docker_registry, "svc:v2")
    assert media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert digest == sha256(body)
    config_digest = json.loads(body)["config"]["digest"]
    config = json.loads(await client.blob(name, config_digest))
    assert config["created"] == "2025-06-01T12:00:00Z"
    assert budget.kinds == [("manifest_get", 200), ("blob", 200)]


@pytest.mark.integration
async def test_tags_lists_every_tag(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, budget: Budget
) -> None:
    url = docker_registry.url
    digest = await push_image(session, url, "team/web", "master", kind="oci", seed="c")
    names = ["master", "v1.0.0", "v1.2.0", "fixes_TECH-2783_bump_sentry-9d239fd", "latest"]
    for tag in names[1:]:
        await tag_image(session, url, "team/web", digest, tag)
    client = make_client(session, budget, docker_registry.host)
    name = ImageName(docker_registry.host, "team/web")

    assert sorted(await client.tags(name)) == sorted(names)
    pages = await client.tag_pages(name)
    assert len(pages) == 1
    assert pages[0]["name"] == "team/web"
    assert budget.kinds == [("tags_list", 200)] * 2


@pytest.mark.integration
async def test_not_found(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, budget: Budget
) -> None:
    await push_image(session, docker_registry.url, "there", "v1", kind="oci", seed="d")
    client = make_client(session, budget, docker_registry.host)
    missing_image = ImageName(docker_registry.host, "not/there")
    there = ImageName(docker_registry.host, "there")

    with pytest.raises(NotFound):
        await client.digest(missing_image, "v1")
    with pytest.raises(NotFound):
        await client.digest(there, "v404")
    with pytest.raises(NotFound, match="MANIFEST_UNKNOWN"):
        await client.manifest(there, "v404")
    with pytest.raises(NotFound, match="NAME_UNKNOWN"):
        await client.tags(missing_image)
    with pytest.raises(NotFound):
        await client.blob(there, "sha256:" + "0" * 64)
    assert [code for _, code in budget.kinds] == [404] * 5
    assert budget.granted == 5


@pytest.mark.integration
async def test_ping_and_bad_arguments(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, budget: Budget
) -> None:
    client = make_client(session, budget, docker_registry.host)
    await client.ping()
    assert budget.kinds == [("ping", 200)]
    with pytest.raises(ValueError, match="not a tag"):
        await client.digest(ImageName(docker_registry.host, "x"), "../../etc")
    with pytest.raises(ValueError, match="not served"):
        await client.digest(ImageName("other.example", "x"), "v1")
    assert budget.granted == 1


# --- Link pagination --------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("style", ["absolute", "relative", "mixed"])
async def test_tags_follow_link_pages(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget, style: str
) -> None:
    all_tags = [f"t{i:02d}" for i in range(10)]

    async def handler(request: web.Request) -> web.Response:
        n = int(request.query.get("n", "100"))
        last = request.query.get("last")
        start = all_tags.index(last) + 1 if last else 0
        page = all_tags[start : start + n]
        headers = {}
        if start + n < len(all_tags):
            target = f"/v2/team/app/tags/list?n={n}&last={page[-1]}"
            absolute = style == "absolute" or (style == "mixed" and start == 0)
            link = f"http://{request.host}{target}" if absolute else target
            headers["Link"] = f'<{link}>; rel="next"'
        return web.json_response(
            {"name": "team/app", "tags": page, "manifest": {"x": start}}, headers=headers
        )

    app, seen = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host)
    name = ImageName(host, "team/app")

    pages = await client.tag_pages(name, page_size=3)
    assert [page["manifest"]["x"] for page in pages] == [0, 3, 6, 9]
    assert [s.path_qs for s in seen][:2] == [
        "/v2/team/app/tags/list?n=3",
        "/v2/team/app/tags/list?n=3&last=t02",
    ]
    assert await client.tags(name, page_size=3) == all_tags
    assert budget.kinds == [("tags_list", 200)] * 8


@pytest.mark.integration
async def test_link_loop_and_garbage_pages(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    async def handler(request: web.Request) -> web.Response:
        repo = request.path.split("/")[2]
        if repo == "loop":
            # Page two points back at page one.
            back = "?n=1" if "last" in request.query else "?n=1&last=a"
            return web.json_response(
                {"tags": ["a"]}, headers={"Link": f'</v2/loop/tags/list{back}>; rel="next"'}
            )
        if repo == "garbage":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if repo == "shape":
            return web.json_response({"tags": "a,b"})
        return web.json_response(["a"])

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host)
    with pytest.raises(BadResponse, match="loops"):
        await client.tags(ImageName(host, "loop"), page_size=1)
    for repo in ("garbage", "shape", "list"):
        with pytest.raises(BadResponse):
            await client.tags(ImageName(host, repo))
    assert budget.granted == 5


# --- bearer tokens ------------------------------------------------------------------


@dataclass
class TokenRegistry:
    """A registry that wants bearer tokens, with its token endpoint on the same host."""

    user: str | None = None
    password: str | None = None
    expires_in: int | None = 300
    service: str | None = "registry.test"
    token_field: str = "token"
    issued: int = 0
    valid: dict[str, str] = field(default_factory=dict)  # token -> scope
    body: bytes = field(default_factory=lambda: build_image("oci", "tok").top.body)

    def challenge(self, request: web.Request) -> str:
        service = f',service="{self.service}"' if self.service else ""
        return f'Bearer realm="http://{request.host}/token"{service}'

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/token":
            if self.user is not None:
                auth = request.headers.get("Authorization")
                if auth != basic(self.user, self.password or ""):
                    return web.json_response({"errors": [{"code": "DENIED"}]}, status=401)
            assert request.query["service"] == (self.service or request.host)
            self.issued += 1
            token = f"tok-{self.issued}"
            self.valid[token] = request.query["scope"]
            answer: dict[str, Any] = {self.token_field: token, "issued_at": "2020-01-01T00:00:00Z"}
            if self.expires_in is not None:
                answer["expires_in"] = self.expires_in
            return web.json_response(answer)
        path = request.path.split("/manifests/")[0].removeprefix("/v2/")
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or self.valid.get(token) != f"repository:{path}:pull":
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED"}]},
                status=401,
                headers={"WWW-Authenticate": self.challenge(request)},
            )
        return manifest_response(self.body, head=request.method == "HEAD")


@pytest.mark.integration
async def test_bearer_flow_caches_the_token(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    registry = TokenRegistry(user="robot", password=PASSWORD, expires_in=300)
    app, seen = logging_app(registry.handle)
    host = await serve(app)
    clock = Clock()
    client = make_client(
        session,
        budget,
        host,
        credentials=Credentials("robot", PASSWORD),
        tokens=TokenCache(clock),
    )
    name = ImageName(host, "team/app")
    expected = sha256(registry.body)

    assert await client.digest(name, "master") == expected
    assert budget.kinds == [("manifest_head", 401), ("token", 200), ("manifest_head", 200)]
    assert budget.granted == 3
    token_request = seen[1]
    assert token_request.path_qs.startswith("/token?")
    assert "scope=repository:team/app:pull" in token_request.path_qs
    assert token_request.headers["Authorization"] == basic("robot", PASSWORD)
    assert seen[2].headers["Authorization"] == "Bearer tok-1"

    # Cached: one request, no token call.
    budget.clear()
    clock.now += 200
    assert await client.digest(name, "staging") == expected
    assert budget.kinds == [("manifest_head", 200)]

    # Past 90 % of its life the token is replaced without waiting for a 401.
    budget.clear()
    clock.now += 80
    assert await client.digest(name, "master") == expected
    assert budget.kinds == [("token", 200), ("manifest_head", 200)]
    assert seen[-1].headers["Authorization"] == "Bearer tok-2"

    # A new scope goes straight to the remembered realm.
    budget.clear()
    assert await client.digest(ImageName(host, "team/other"), "master") == expected
    assert budget.kinds == [("token", 200), ("manifest_head", 200)]
    assert "scope=repository:team/other:pull" in seen[-2].path_qs


@pytest.mark.integration
async def test_ping_learns_the_challenge(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    registry = TokenRegistry()
    app, _ = logging_app(registry.handle)
    host = await serve(app)
    client = make_client(session, budget, host)
    await client.ping()
    await client.digest(ImageName(host, "team/app"), "v1")
    assert budget.kinds == [("ping", 401), ("token", 200), ("manifest_head", 200)]


@pytest.mark.integration
async def test_token_defaults_access_token_missing_service_and_anonymous(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    registry = TokenRegistry(expires_in=None, service=None, token_field="access_token")
    app, seen = logging_app(registry.handle)
    host = await serve(app)
    clock = Clock()
    client = make_client(session, budget, host, tokens=TokenCache(clock))
    name = ImageName(host, "lib/x")

    await client.digest(name, "v1")
    assert "Authorization" not in seen[1].headers  # anonymous token request
    assert f"service={host}" in seen[1].path_qs  # service defaults to the host
    budget.clear()
    clock.now += 50  # default lifetime 60 s, refreshed a few seconds early
    await client.digest(name, "v1")
    assert budget.kinds == [("manifest_head", 200)]
    clock.now += 6
    await client.digest(name, "v1")
    assert budget.kinds == [("manifest_head", 200), ("token", 200), ("manifest_head", 200)]


@pytest.mark.integration
async def test_concurrent_lookups_share_one_token_request(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    registry = TokenRegistry()
    app, _ = logging_app(registry.handle)
    host = await serve(app)
    client = make_client(session, budget, host)
    name = ImageName(host, "team/app")

    await asyncio.gather(*(client.digest(name, f"t{i}") for i in range(5)))
    assert registry.issued == 1
    assert sorted(budget.kinds, key=str) == sorted(
        [("manifest_head", 401)] * 5 + [("token", 200)] + [("manifest_head", 200)] * 5, key=str
    )


@pytest.mark.integration
async def test_rejected_token_and_refused_credentials(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    registry = TokenRegistry(user="robot", password="right")
    app, _ = logging_app(registry.handle)
    host = await serve(app)
    client = make_client(session, budget, host, credentials=Credentials("robot", PASSWORD))
    with pytest.raises(Unauthorized) as caught:
        await client.digest(ImageName(host, "team/app"), "master")
    assert budget.kinds == [("manifest_head", 401), ("token", 401)]
    assert PASSWORD not in str(caught.value)
    assert base64.b64encode(f"robot:{PASSWORD}".encode()).decode() not in str(caught.value)

    # A token the registry keeps refusing is fetched once more, then given up on.
    async def always_401(request: web.Request) -> web.Response:
        if request.path == "/token":
            return web.json_response({"token": "useless-token-value"})
        realm = f'Bearer realm="http://{request.host}/token"'
        return web.Response(status=401, headers={"WWW-Authenticate": realm})

    app, _ = logging_app(always_401)
    host = await serve(app)
    budget.clear()
    client = make_client(session, budget, host)
    with pytest.raises(Unauthorized) as caught:
        await client.digest(ImageName(host, "team/app"), "master")
    assert budget.kinds == [("manifest_head", 401), ("token", 200), ("manifest_head", 401)]
    assert "useless-token-value" not in str(caught.value)


@pytest.mark.integration
async def test_garbage_token_answer(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/token":
            return web.Response(text="not json")
        realm = f'Bearer realm="http://{request.host}/token",service="x"'
        return web.Response(status=401, headers={"WWW-Authenticate": realm})

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host)
    with pytest.raises(BadResponse, match="token answer is not JSON"):
        await client.digest(ImageName(host, "a"), "v1")


class StaticToken:
    """A TokenSource, as google auth will provide: an access token used as a password."""

    def __init__(self) -> None:
        self.calls = 0

    async def password(self) -> str:
        self.calls += 1
        return "ya29.access-token"


@pytest.mark.integration
async def test_token_source_uses_oauth2accesstoken(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    registry = TokenRegistry(user="oauth2accesstoken", password="ya29.access-token")
    app, _ = logging_app(registry.handle)
    host = await serve(app)
    source = StaticToken()
    client = make_client(session, budget, host, credentials=source)
    await client.digest(ImageName(host, "p/r/img"), "v1")
    assert registry.issued == 1
    assert source.calls == 1
    google = RegistryConfig(host="*.gcr.io", api="google", auth="google")
    assert credentials_for(google, "eu.gcr.io", {}, token_source=source) is source
    with pytest.raises(CredentialsError, match="TokenSource"):
        credentials_for(google, "eu.gcr.io", {})


# --- Basic auth, redirects ----------------------------------------------------------


@pytest.mark.integration
async def test_basic_auth_only_to_the_registry_host(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    blob = b'{"created":"2025-01-01T00:00:00Z"}'
    digest = sha256(blob)

    async def storage(request: web.Request) -> web.Response:
        return web.Response(body=blob)

    storage_app, storage_seen = logging_app(storage)
    storage_host = await serve(storage_app)

    async def registry(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != basic("robot", PASSWORD):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="reg"'})
        if "/blobs/" in request.path and "hop" not in request.query:
            return web.Response(status=302, headers={"Location": "?hop=1"})
        return web.Response(
            status=307, headers={"Location": f"http://{storage_host}/bucket/{digest}?sig=abc"}
        )

    registry_app, registry_seen = logging_app(registry)
    host = await serve(registry_app)
    client = make_client(session, budget, host, credentials=Credentials("robot", PASSWORD))
    name = ImageName(host, "x")

    assert await client.blob(name, digest) == blob
    assert budget.kinds == [("blob", 401), ("blob", 302), ("blob", 307), ("blob", 200)]
    # The registry saw credentials (after its challenge, and on the same-host hop).
    assert [s.headers.get("Authorization") for s in registry_seen] == [
        None,
        basic("robot", PASSWORD),
        basic("robot", PASSWORD),
    ]
    # The storage host never did.
    assert len(storage_seen) == 1
    assert "Authorization" not in storage_seen[0].headers

    # The Basic challenge is remembered: credentials go with the first request now.
    budget.clear()
    assert await client.blob(name, digest) == blob
    assert budget.kinds == [("blob", 302), ("blob", 307), ("blob", 200)]


@pytest.mark.integration
async def test_signed_storage_url_stays_out_of_errors(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    async def storage(request: web.Request) -> web.Response:
        return web.Response(status=403, text="expired")

    storage_app, _ = logging_app(storage)
    storage_host = await serve(storage_app)

    async def registry(request: web.Request) -> web.Response:
        target = f"http://{storage_host}/b?X-Goog-Signature=SIGNATURE-SECRET"
        return web.Response(status=307, headers={"Location": target})

    app, _ = logging_app(registry)
    host = await serve(app)
    client = make_client(session, budget, host)
    with pytest.raises(Unauthorized) as caught:
        await client.blob(ImageName(host, "x"), sha256(b"x"))
    assert f"http://{storage_host}/b" in str(caught.value)
    assert "SIGNATURE-SECRET" not in str(caught.value)
    assert "SIGNATURE-SECRET" not in str(caught.value.url)


@pytest.mark.integration
async def test_blob_must_hash_to_its_digest(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"tampered")

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host)
    with pytest.raises(BadResponse, match="hash"):
        await client.blob(ImageName(host, "x"), sha256(b"original"))


@pytest.mark.integration
async def test_wrong_basic_credentials_are_not_sent_twice(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="reg"'})

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host, credentials=Credentials("robot", PASSWORD))
    for _ in range(2):
        with pytest.raises(Unauthorized) as caught:
            await client.digest(ImageName(host, "x"), "v1")
        assert PASSWORD not in str(caught.value)
        assert PASSWORD not in repr(caught.value)
    # First call: without, then with credentials; second call: with them at once.
    assert budget.kinds == [("manifest_head", 401)] * 3
    anonymous = make_client(session, budget, host)
    with pytest.raises(Unauthorized, match="wants credentials"):
        await anonymous.digest(ImageName(host, "x"), "v1")


# --- digests ------------------------------------------------------------------------


@pytest.mark.integration
async def test_missing_digest_header_hashes_the_get_body(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    # Not canonical JSON on purpose: the digest is of the exact bytes served.
    body = (
        b'{\n  "schemaVersion": 2,\n'
        b'  "mediaType": "application/vnd.oci.image.index.v1+json",\n  "manifests": []\n}'
    )

    async def handler(request: web.Request) -> web.Response:
        assert request.headers["Accept"] == ACCEPT
        return manifest_response(body, head=request.method == "HEAD", with_digest=False)

    app, seen = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host)
    assert await client.digest(ImageName(host, "x"), "v1") == sha256(body)
    assert budget.kinds == [("manifest_head", 200), ("manifest_get", 200)]
    assert [s.method for s in seen] == ["HEAD", "GET"]


@pytest.mark.integration
@pytest.mark.parametrize(
    "header", ["md5:abc", "sha256:" + "A" * 64, "sha256:" + "0" * 63, "sha512:" + "0" * 128]
)
async def test_bad_digest_header(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget, header: str
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(headers={"Docker-Content-Digest": header})

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host)
    with pytest.raises(BadResponse, match="Docker-Content-Digest"):
        await client.digest(ImageName(host, "x"), "v1")
    assert budget.granted == 1


@pytest.mark.integration
async def test_garbage_manifest(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    body = b'{"mediaType": "application/vnd.oci.image.manifest.v1+json"}'

    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/garbage"):
            return web.Response(body=b"\x00\xffnot json")
        # The header disagrees with the body: someone changed the bytes on the way.
        return web.Response(body=body, headers={"Docker-Content-Digest": sha256(b"other")})

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host)
    with pytest.raises(BadResponse, match="not JSON"):
        await client.manifest(ImageName(host, "x"), "garbage")
    with pytest.raises(BadResponse, match="hashes to"):
        await client.manifest(ImageName(host, "x"), "v1")
    with pytest.raises(BadResponse, match="hashes to"):
        await client.manifest(ImageName(host, "x"), sha256(b"something else"))


@pytest.mark.integration
async def test_error_codes_map_to_exceptions(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if "denied" in request.path:
            return web.json_response({"errors": [{"code": "DENIED"}]}, status=403)
        if "teapot" in request.path:
            return web.Response(status=418)
        # Some registries say NAME_UNKNOWN with a 400.
        return web.json_response(
            {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]},
            status=400,
        )

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host)
    with pytest.raises(NotFound, match="NAME_UNKNOWN"):
        await client.tags(ImageName(host, "x"))
    with pytest.raises(Unauthorized):
        await client.tags(ImageName(host, "denied"))
    with pytest.raises(RegistryError, match="418") as caught:
        await client.tags(ImageName(host, "teapot"))
    assert caught.value.status == 418
    assert budget.granted == 3  # no retries on 4xx


# --- retries, throttling ------------------------------------------------------------


@pytest.mark.integration
async def test_5xx_twice_then_success(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    calls = 0
    body = build_image("docker", "r").top.body

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return web.Response(status=503 if calls == 1 else 500, text="backend error")
        return manifest_response(body, head=True)

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host)
    assert await client.digest(ImageName(host, "x"), "v1") == sha256(body)
    assert budget.kinds == [("manifest_head", 503), ("manifest_head", 500), ("manifest_head", 200)]
    assert budget.granted == 3


@pytest.mark.integration
async def test_5xx_gives_up_after_the_retries(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=502)

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host, retries=2)
    with pytest.raises(RegistryUnavailable, match="502 after 3 attempts"):
        await client.tags(ImageName(host, "x"))
    assert budget.kinds == [("tags_list", 502)] * 3


@pytest.mark.integration
async def test_timeout_is_retried(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    calls = 0
    body = build_image("oci", "slow").top.body

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(2)  # a server slower than the client's timeout: the behaviour
        return manifest_response(body, head=True)

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host, timeout=0.3)
    assert await client.digest(ImageName(host, "x"), "v1") == sha256(body)
    assert len(budget.records) == 2
    first, second = budget.records
    assert isinstance(first.code, str) and "Timeout" in first.code
    assert first.elapsed >= 0.25
    assert second.code == 200
    assert budget.granted == 2


@pytest.mark.integration
async def test_connection_errors_are_retried_then_unavailable(
    session: aiohttp.ClientSession, budget: Budget
) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    client = make_client(session, budget, host, retries=2)
    with pytest.raises(RegistryUnavailable, match="after 3 attempts"):
        await client.ping()
    assert len(budget.records) == 3
    assert all(isinstance(r.code, str) and "Connect" in r.code for r in budget.records)
    assert budget.granted == 3


@pytest.mark.integration
@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), (None, None), ("soon", None), ("http-date", 30.0)],
)
async def test_429_raises_throttled_at_once(
    serve: Serve,
    session: aiohttp.ClientSession,
    budget: Budget,
    retry_after: str | None,
    expected: float | None,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        headers = {}
        if retry_after == "http-date":
            headers["Retry-After"] = format_datetime(
                datetime.now(UTC) + timedelta(seconds=31), usegmt=True
            )
        elif retry_after is not None:
            headers["Retry-After"] = retry_after
        return web.Response(status=429, text="Quota Exceeded.", headers=headers)

    app, _ = logging_app(handler)
    host = await serve(app)
    client = make_client(session, budget, host)
    with pytest.raises(Throttled, match="Quota Exceeded") as caught:
        await client.tags(ImageName(host, "x"))
    if expected is None:
        assert caught.value.retry_after is None
    else:
        assert caught.value.retry_after == pytest.approx(expected, abs=1.5)
    assert budget.kinds == [("tags_list", 429)]


@pytest.mark.unit
def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now) == 60.0
    assert parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now) == 0.0
    assert parse_retry_after("", now) is None
    assert parse_retry_after("nan", now) is None


# --- plain http ---------------------------------------------------------------------


@pytest.mark.integration
async def test_plain_http_registry_refused_unless_insecure(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    app, seen = logging_app(empty_ok)
    host = await serve(app)
    client = make_client(session, budget, host, insecure=False)
    assert str(client.base_url) == f"https://{host}"
    with pytest.raises(RegistryError, match=f"https://{host}/v2/") as caught:
        await client.ping()
    assert not isinstance(caught.value, RegistryUnavailable)  # a TLS failure is not retried
    assert len(budget.records) == 1
    assert isinstance(budget.records[0].code, str) and "SSL" in budget.records[0].code
    assert seen == []  # no plain-http request reached the server


@pytest.mark.integration
async def test_https_registry_never_follows_to_plain_http(
    serve: Serve, session: aiohttp.ClientSession, budget: Budget
) -> None:
    plain_app, plain_seen = logging_app(empty_ok)
    plain = await serve(plain_app)

    async def handler(request: web.Request) -> web.Response:
        repo = request.path.split("/")[2]
        if repo == "realm":
            realm = f'Bearer realm="http://{plain}/token",service="s"'
            return web.Response(status=401, headers={"WWW-Authenticate": realm})
        if repo == "blob":
            return web.Response(status=307, headers={"Location": f"http://{plain}/b"})
        return web.json_response(
            {"tags": ["a"]}, headers={"Link": f'<http://{plain}/v2/page/tags/list>; rel="next"'}
        )

    app, _ = logging_app(handler)
    host = await serve(app, tls=True)
    client = make_client(
        session, budget, host, insecure=False, credentials=Credentials("u", PASSWORD)
    )
    with pytest.raises(RegistryError, match="refusing plain http"):
        await client.blob(ImageName(host, "blob"), sha256(b""))
    with pytest.raises(RegistryError, match="refusing plain http"):
        await client.tags(ImageName(host, "page"))
    # Credentials would go to the token realm: not over plain http.
    with pytest.raises(RegistryError, match="refusing plain http"):
        await client.digest(ImageName(host, "realm"), "v1")
    assert plain_seen == []
    assert budget.kinds == [("blob", 307), ("tags_list", 200), ("manifest_head", 401)]


# --- credentials --------------------------------------------------------------------


@pytest.mark.unit
def test_credentials_repr_hides_the_password() -> None:
    creds = Credentials("robot", PASSWORD)
    assert PASSWORD not in repr(creds)
    assert PASSWORD not in str(creds)
    assert "robot" in repr(creds)


@pytest.mark.unit
def test_credentials_for_basic_and_anonymous() -> None:
    entry = RegistryConfig(
        host="reg.example", auth="basic", username_env="REG_USER", password_env="REG_PASS"
    )
    creds = credentials_for(entry, "reg.example", {"REG_USER": "robot", "REG_PASS": PASSWORD})
    assert creds == Credentials("robot", PASSWORD)
    with pytest.raises(CredentialsError, match="REG_PASS") as caught:
        credentials_for(entry, "reg.example", {"REG_USER": "robot"})
    assert "robot" not in str(caught.value)
    assert credentials_for(RegistryConfig(host="x"), "x", {}) is None


@pytest.mark.unit
def test_credentials_for_dockerconfig(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    entry = RegistryConfig(host="*", auth="dockerconfig", config=str(config))
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://reg.example": {"auth": base64.b64encode(b"robot:p:w").decode()},
                    "other.example:5000": {"username": "u2", "password": PASSWORD},
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
                    "broken.example": {"auth": "%%%"},
                    "stored.example": {},
                },
                "credHelpers": {"gcr.io": "gcloud"},
                "credsStore": "desktop",
            }
        )
    )
    assert credentials_for(entry, "reg.example", {}) == Credentials("robot", "p:w")
    assert credentials_for(entry, "other.example:5000", {}) == Credentials("u2", PASSWORD)
    assert credentials_for(entry, "registry-1.docker.io", {}) == Credentials("hub", "pw")
    with pytest.raises(CredentialsError, match=r"credHelpers.*not supported"):
        credentials_for(entry, "gcr.io", {})
    with pytest.raises(CredentialsError, match="credsStore is not supported"):
        credentials_for(entry, "stored.example", {})
    with pytest.raises(CredentialsError, match="not base64") as caught:
        credentials_for(entry, "broken.example", {})
    assert "%%%" not in str(caught.value)
    config.write_text(json.dumps({"auths": {}}))
    with pytest.raises(CredentialsError, match=r"no credentials for nowhere\.example"):
        credentials_for(entry, "nowhere.example", {})
    config.write_text("{not json")
    with pytest.raises(CredentialsError, match="not a JSON"):
        credentials_for(entry, "reg.example", {})


# --- challenges and the token cache ---------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (
            'Bearer realm="https://gcr.io/v2/token",service="gcr.io"',
            "bearer",
            {"realm": "https://gcr.io/v2/token", "service": "gcr.io"},
        ),
        (
            'bearer  realm = "https://a/token" ,  service="a b",scope="repository:x/y:pull"',
            "bearer",
            {"realm": "https://a/token", "service": "a b", "scope": "repository:x/y:pull"},
        ),
        (
            'BEARER Realm="https://x/t",error=insufficient_scope',
            "bearer",
            {"realm": "https://x/t", "error": "insufficient_scope"},
        ),
        (
            'Basic realm="Registry \\"quoted\\" realm"',
            "basic",
            {"realm": 'Registry "quoted" realm'},
        ),
        ('Basic realm="a", Bearer realm="b"', "basic", {"realm": "a"}),
        ("Basic", "basic", {}),
    ],
)
def test_parse_challenge(header: str, scheme: str, params: dict[str, str]) -> None:
    challenge = parse_challenge(header)
    assert challenge is not None
    assert challenge.scheme == scheme
    assert dict(challenge.params) == params


@pytest.mark.unit
def test_parse_challenge_service_default_and_garbage() -> None:
    challenge = parse_challenge('Bearer realm="https://europe-docker.pkg.dev/v2/token"')
    assert challenge is not None
    assert challenge.service("europe-docker.pkg.dev") == "europe-docker.pkg.dev"
    assert parse_challenge("") is None
    assert parse_challenge("   ") is None


@pytest.mark.unit
def test_token_cache_expiry() -> None:
    clock = Clock()
    cache = TokenCache(clock)
    cache.put("h", "s", "tok", 300)
    assert cache.get("h", "s") == "tok"
    assert cache.get("h", "other") is None
    assert cache.get("other", "s") is None
    clock.now += 269
    assert cache.get("h", "s") == "tok"
    clock.now += 2  # within the last 10 %
    assert cache.get("h", "s") is None
    cache.put("h", "s", "short", 4)  # short-lived tokens still get some use
    clock.now += 1.9
    assert cache.get("h", "s") == "short"
    assert "short" not in repr(cache)


@pytest.mark.unit
def test_manifest_types_are_exactly_the_four() -> None:
    assert ", ".join(MANIFEST_TYPES) == ACCEPT
