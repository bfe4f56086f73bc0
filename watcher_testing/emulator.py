"""A Google Container Registry / Artifact Registry emulator for tests, benchmarks and the demo.

It answers the registry API the watcher uses the way Google's registries do, over real HTTP
on 127.0.0.1, so the client under test runs unchanged:

- token auth: ``401`` challenges ``Bearer realm="http://<host>/v2/token",service="<host>"``
  (``service`` omitted in ``artifact`` mode, as Artifact Registry does), and the token
  endpoint taking Basic ``oauth2accesstoken`` / ``_token`` plus an OAuth access token;
- ``tags/list`` with Google's extension (``child`` and the ``manifest`` map; times as JSON
  strings on GCR, as JSON integers on Artifact Registry, shapes exactly as in
  ``shared/fixtures``) and ``n`` / ``last`` pagination with a relative ``Link`` header;
- manifests (HEAD/GET) and config blobs with real sha256 digests;
- a per-client sliding-window quota answering ``429`` ``Quota Exceeded.``;
- fault injection (latency, 5xx bursts, hung requests, malformed bodies, dropped
  connections), changeable while it runs;
- a request log with monotonic and wall timestamps, to prove a client never exceeded a quota;
- registry events: pointed at a Pub/Sub emulator (``pubsub``), every push, untag and delete
  is published on the ``gcr`` topic of the image's project, in Google's message shape.

Choices where Google's behaviour is unknown or would make the emulator useless for tests:

- Pagination: gcr.io historically ignores ``n`` and returns everything (the ``manifest`` map
  makes pages awkward). The watcher must still follow ``Link`` (Artifact Registry and other
  registries page), so the emulator pages. A page's ``manifest`` holds the entries of the
  digests tagged on that page (each entry with *all* its tags) and, on the first page only,
  the untagged digests: the union over all pages is exactly the full map, a digest whose
  tags span two pages appears identically on both, and a client that reads the map of only
  the first page is caught. ``EmulatorSettings.manifest_paging = "full"`` sends the whole
  map on every page instead.
- Without ``n`` the page size is ``page_size_max`` (the spec lets a registry choose one).
- A bad token-endpoint password gets ``401`` with an ``errors`` body. Google answers ``403``
  when valid credentials lack permission on a repository; invalid credentials are an
  authentication failure, which the token spec (and Docker's clients) signal with ``401``.
- A stored index / manifest list is served even when ``Accept`` names no index or list type:
  the digest a client resolves then always equals the digest in the ``tags/list`` map, which
  is what GCR's listing reports. ``strict_accept=True`` reproduces the distribution
  registry instead (a manifest list is replaced by its linux/amd64 image, an OCI index is
  refused with ``MANIFEST_UNKNOWN``), to catch a client that forgets the index types.
- Tokens are scoped: a token issued for ``repository:a:pull`` does not open ``b``
  (``enforce_scope``), so a client that caches one token per registry instead of per
  (registry, scope) fails here as it would on Google.
- Quota: only admitted requests fill the window by default (``quota_counts_rejected``), so a
  client that backs off recovers once its window drains.
- The token endpoint accepts any ``service`` value (Google's does not check it closely);
  scopes may be repeated or space-separated.
- ``Retry-After`` is whole seconds (RFC 9110 ``delay-seconds``): ``retry_after`` is rounded up.
- Quota and request log count a request at its arrival, as Google's frontends do: the
  time the kernel received it (``TCP_INFO``, to within two clock ticks), not the later
  time this process's event loop got round to it, which a loaded machine delays by tens
  of milliseconds and which is no doing of the client.

Every client IP on 127.0.0.0/8 is its own quota client: a test can act as two replicas by
binding client sockets to 127.0.0.2, 127.0.0.3, ... (``aiohttp.TCPConnector(local_addr=...)``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import bisect
import contextlib
import hashlib
import json
import math
import re
import secrets
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import quote

from aiohttp import web

Mode = Literal["gcr", "artifact"]
ImageKind = Literal["oci", "docker", "index", "list"]
RequestKind = Literal[
    "ping",
    "token",
    "tags_list",
    "manifest_head",
    "manifest_get",
    "blob",
    "metadata",
    "oauth",
    "other",
]
# truncated / garbage: the body is no longer JSON. extension: valid JSON whose Google
# ``manifest`` map is broken (an upload time that is not a number), as a changed API would be.
Malformation = Literal["truncated", "garbage", "extension"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})

TOKEN_USERS = frozenset({"oauth2accesstoken", "_token"})
METADATA_FLAVOR = "Google"
METADATA_ROOT = "/computeMetadata/v1/"
DEFAULT_SERVICE_ACCOUNT = "image-watcher@emulator-project.iam.gserviceaccount.com"
DEFAULT_ACCESS_TOKEN = "emulator-access-token"
QUOTA_BODY = "Quota Exceeded."
JSON_TYPE = "application/json; charset=utf-8"

_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAGS_RE = re.compile(r"/v2/(?P<name>.+)/tags/list")
_REF_RE = re.compile(r"/v2/(?P<name>.+)/(?P<what>manifests|blobs)/(?P<ref>[^/]+)")
_SCOPE_RE = re.compile(r"repository:(?P<name>[^:]+):(?P<actions>[a-z*,]+)")


@dataclass
class EmulatorSettings:
    """How the emulated registry behaves; fixed for the life of one server."""

    mode: Mode = "gcr"  # gcr: times as JSON strings; artifact: integers, no layerId/service
    host: str | None = None  # host for realm/service; None: the bound "127.0.0.1:PORT"
    bind: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    auth_required: bool = True
    access_tokens: set[str] = field(default_factory=lambda: {DEFAULT_ACCESS_TOKEN})
    token_ttl: float = 3600.0  # expires_in of issued bearer tokens, seconds
    enforce_scope: bool = True
    quota_requests: int | None = None  # per client IP per quota_window; None: unlimited
    quota_window: float = 600.0
    quota_counts_rejected: bool = False
    retry_after: float | None = None  # None: 429s carry no Retry-After (as Google's)
    page_size_max: int | None = 1000  # cap on n, and the page size when n is absent
    manifest_paging: Literal["page", "full"] = "page"
    strict_accept: bool = False
    # A GCE/GKE metadata server on the same port, for Application Default Credentials:
    # point GCE_METADATA_HOST and GCE_METADATA_IP at ``host``. It issues a new OAuth
    # access token per fetch, living ``metadata_token_ttl`` seconds, which the token
    # endpoint then accepts until it expires (as Google's would).
    metadata: bool = False
    metadata_token_ttl: float = 3600.0
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    project_id: str = "emulator-project"
    # Google's OAuth token endpoint (``/token``), for service-account key files
    # (GOOGLE_APPLICATION_CREDENTIALS with ``token_uri`` pointing here): key id ->
    # the account's public key (PEM). A signed JWT-bearer assertion is exchanged for
    # an access token living ``metadata_token_ttl``, as the metadata server's are.
    service_account_keys: dict[str, str] = field(default_factory=dict)
    # A Pub/Sub emulator (``127.0.0.1:PORT``, as PUBSUB_EMULATOR_HOST): every push, untag
    # and delete is published on the topic ``gcr`` of the image's project (its first path
    # segment), as Google's registries do; a project without that topic gets nothing.
    pubsub: str | None = None


@dataclass
class LoggedRequest:
    """One request as the emulator saw it.

    ``monotonic`` is the arrival time on ``time.monotonic()`` (what the quota counts:
    when the kernel received the request, not when the handler ran);
    ``status`` is None while the request is in flight, or when no HTTP response was
    sent (a dropped connection).
    """

    monotonic: float
    wall: float
    client: str
    method: str
    path: str
    kind: RequestKind
    status: int | None = None
    repository: str | None = None
    query: str = ""


@dataclass
class Faults:
    """Faults that apply to every request until changed (one-shot faults are methods)."""

    latency: float = 0.0  # seconds added before every answer


@dataclass
class _PendingFault:
    action: Literal["fail", "hang", "malform", "drop"]
    remaining: int | None  # None: until clear_faults()
    kind: RequestKind | None
    status: int = 503
    seconds: float = 0.0
    how: Malformation = "truncated"


@dataclass
class _Manifest:
    digest: str
    media_type: str
    body: bytes
    size: int
    created_ms: int
    uploaded_ms: int
    config_digest: str | None
    platform: str | None  # "os/arch" of an image inside an index
    children: tuple[str, ...]


@dataclass
class _Repository:
    manifests: dict[str, _Manifest] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest
    blobs: dict[str, bytes] = field(default_factory=dict)  # config blobs


@dataclass
class _Token:
    expires: float  # monotonic
    repositories: frozenset[str]


class _Drop(Exception):
    """Raised inside the handler to close the connection without an answer."""


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _check_path(path: str) -> None:
    if not path or not all(_COMPONENT_RE.fullmatch(part) for part in path.split("/")):
        raise ValueError(f"bad repository path: {path!r}")


def _errors(code: str, message: str, status: int, **headers: str) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


# struct tcp_info (linux/tcp.h): eight one-byte fields, then 32-bit counters of which
# tcpi_last_data_recv, the milliseconds since data last arrived, is the twelfth.
_TCP_INFO_SIZE = 104
_LAST_DATA_RECV = 8 + 11 * 4
# The kernel counts that age in clock ticks, up to a tick either way; a tick is at most
# 10 ms (HZ=100). Added once, the arrival is never put before the request was sent.
_TICK = 0.01


def _arrival(request: web.BaseRequest) -> float:
    """When the request's last bytes reached this host, on ``time.monotonic()``.

    Google's frontends count a request when it reaches them. Our handler runs once this
    process's event loop gets to it, which on a loaded machine can be tens of
    milliseconds later, and a batch that waited in the socket would be stamped
    together. The kernel knows when the data came in (``TCP_INFO``, in clock ticks):
    the arrival is never before the request was sent and at most two ticks after it,
    or the handler's time if that is earlier (and without ``TCP_INFO``).
    """
    now = time.monotonic()
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return now
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_SIZE)
    except OSError:
        return now
    if len(info) < _LAST_DATA_RECV + 4:
        return now
    age_ms: int = struct.unpack_from("I", info, _LAST_DATA_RECV)[0]
    return min(now, now - age_ms / 1000 + _TICK)


def max_in_window(timestamps: Iterable[float], window_seconds: float) -> int:
    """The most timestamps in any window ``[t, t + window_seconds)``."""
    times = sorted(timestamps)
    best = 0
    end = 0
    for start, t in enumerate(times):
        end = max(end, start)
        while end < len(times) and times[end] - t < window_seconds:
            end += 1
        best = max(best, end - start)
    return best


class GoogleRegistryEmulator:
    """The emulated registry: ``async with GoogleRegistryEmulator(settings) as emu: ...``."""

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.settings = settings or EmulatorSettings()
        self.faults = Faults()
        self.log: list[LoggedRequest] = []
        self._pending: list[_PendingFault] = []
        self._repos: dict[str, _Repository] = {}
        self._tokens: dict[str, _Token] = {}
        # OAuth access tokens issued by the metadata server -> monotonic expiry.
        self._access_tokens: dict[str, float] = {}
        self._windows: dict[str, list[float]] = {}
        self._sequence = 0
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._port: int | None = None
        # Messages published on Pub/Sub (settings.pubsub).
        self.published = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Hung requests wake up on stop (see _sleep), so a short shutdown is enough.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        # A restart (stop, then start) comes back on the same port, as a restarted registry.
        port = self.settings.port or self._port or 0
        site = web.TCPSite(self._runner, self.settings.bind, port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        self._stopping.clear()

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> GoogleRegistryEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not running")
        return self._port

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of image names served here."""
        return f"{self.settings.bind}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def service(self) -> str:
        """The host named in challenges and expected by the token endpoint."""
        return self.settings.host or self.host

    # -- images -----------------------------------------------------------------------------

    def push(
        self,
        path: str,
        tag: str | None,
        *,
        kind: ImageKind = "oci",
        created: datetime | None = None,
        uploaded: datetime | None = None,
        size: int = 1_048_576,
        platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"),
        media_type: str | None = None,
        announce: bool = True,
    ) -> str:
        """Store a new image (every push is new content) and point ``tag`` at it.

        With ``settings.pubsub``, the push is published on the project's ``gcr`` topic
        unless ``announce`` is false (a test publishing the messages itself).

        ``index`` / ``list`` store one image per platform, untagged, as GCR lists them.
        ``media_type`` (``oci`` / ``docker`` only) overrides the manifest's media type,
        to list an artifact that is not a runnable image (a Helm chart, a signature).
        Returns the digest of the top manifest.
        """
        _check_path(path)
        if media_type is not None and kind not in ("oci", "docker"):
            raise ValueError("media_type applies to kind oci or docker only")
        if tag is not None and not _TAG_RE.fullmatch(tag):
            raise ValueError(f"bad tag: {tag!r}")
        now = datetime.now(UTC)
        created = created or now
        uploaded = uploaded or now
        repo = self._repos.setdefault(path, _Repository())
        if kind in ("oci", "docker"):
            top = self._image(repo, path, kind, created, uploaded, size, "linux/amd64", media_type)
        else:
            child_kind: ImageKind = "oci" if kind == "index" else "docker"
            children = [
                self._image(repo, path, child_kind, created, uploaded, size, platform)
                for platform in platforms
            ]
            media_type = OCI_INDEX if kind == "index" else DOCKER_LIST
            document = {
                "schemaVersion": 2,
                "mediaType": media_type,
                "manifests": [
                    {
                        "mediaType": child.media_type,
                        "digest": child.digest,
                        "size": len(child.body),
                        "platform": dict(
                            zip(
                                ("os", "architecture"),
                                (child.platform or "/").split("/"),
                                strict=True,
                            )
                        ),
                    }
                    for child in children
                ],
            }
            body = json.dumps(document, indent=3).encode()
            top = _Manifest(
                digest=_sha256(body),
                media_type=media_type,
                body=body,
                size=size,
                created_ms=_ms(created),
                uploaded_ms=_ms(uploaded),
                config_digest=None,
                platform=None,
                children=tuple(child.digest for child in children),
            )
            repo.manifests[top.digest] = top
        if tag is not None:
            repo.tags[tag] = top.digest
        if announce:
            self._announce(path, "INSERT", digest=top.digest, tag=tag)
        return top.digest

    def _announce(
        self, path: str, action: str, *, digest: str | None = None, tag: str | None = None
    ) -> None:
        """Publish the change on the project's ``gcr`` topic, shaped as Google's messages."""
        if self.settings.pubsub is None:
            return
        body: dict[str, str] = {"action": action}
        if digest is not None:
            body["digest"] = f"{self.service}/{path}@{digest}"
        if tag is not None:
            body["tag"] = f"{self.service}/{path}:{tag}"
        project = path.split("/", 1)[0]
        data = base64.b64encode(json.dumps(body).encode()).decode()
        request = urllib.request.Request(
            f"http://{self.settings.pubsub}/v1/projects/{project}/topics/gcr:publish",
            data=json.dumps({"messages": [{"data": data}]}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # no topic gcr in that project: nobody listens
                raise
        self.published += 1

    def _image(
        self,
        repo: _Repository,
        path: str,
        kind: ImageKind,
        created: datetime,
        uploaded: datetime,
        size: int,
        platform: str,
        media_type: str | None = None,
    ) -> _Manifest:
        self._sequence += 1
        os_name, arch = platform.split("/", 1)
        layer = _sha256(f"layer {path} {self._sequence} {platform}".encode())
        config = {
            "architecture": arch,
            "os": os_name,
            "created": _iso(created),
            # The sequence number makes every push distinct content, as a new build is.
            "config": {"Labels": {"emulator.sequence": str(self._sequence)}},
            "rootfs": {"type": "layers", "diff_ids": [layer]},
            "history": [{"created": _iso(created), "created_by": "emulator push"}],
        }
        config_body = json.dumps(config, indent=None, separators=(",", ":")).encode()
        config_digest = _sha256(config_body)
        repo.blobs[config_digest] = config_body
        oci = kind == "oci"
        media_type = media_type or (OCI_MANIFEST if oci else DOCKER_MANIFEST)
        document = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "digest": config_digest,
                "size": len(config_body),
            },
            "layers": [
                {"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "digest": layer, "size": size}
            ],
        }
        body = json.dumps(document, indent=3).encode()
        manifest = _Manifest(
            digest=_sha256(body),
            media_type=media_type,
            body=body,
            size=size,
            created_ms=_ms(created),
            uploaded_ms=_ms(uploaded),
            config_digest=config_digest,
            platform=platform,
            children=(),
        )
        repo.manifests[manifest.digest] = manifest
        return manifest

    def retag(self, path: str, tag: str, digest: str) -> None:
        """Point ``tag`` at an existing ``digest`` (moving it if it points elsewhere)."""
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"bad tag: {tag!r}")
        repo = self._repo(path)
        if digest not in repo.manifests:
            raise KeyError(f"{path}@{digest} is not stored")
        repo.tags[tag] = digest
        self._announce(path, "INSERT", digest=digest, tag=tag)

    def untag(self, path: str, tag: str) -> None:
        """Remove ``tag``; its image stays, untagged if this was its last tag."""
        repo = self._repo(path)
        if tag not in repo.tags:
            raise KeyError(f"{path}:{tag} is not stored")
        del repo.tags[tag]
        self._announce(path, "DELETE", tag=tag)

    def delete(self, path: str, digest: str) -> None:
        """Delete an image and every tag on it (an index's platform images stay)."""
        repo = self._repo(path)
        manifest = repo.manifests.pop(digest, None)
        if manifest is None:
            raise KeyError(f"{path}@{digest} is not stored")
        for tag in [t for t, d in repo.tags.items() if d == digest]:
            del repo.tags[tag]
        used = {m.config_digest for m in repo.manifests.values()}
        if manifest.config_digest is not None and manifest.config_digest not in used:
            del repo.blobs[manifest.config_digest]
        if not repo.manifests:
            # Google drops a repository with no images left.
            del self._repos[path]
        self._announce(path, "DELETE", digest=digest)

    def tags(self, path: str) -> dict[str, str]:
        """Tag -> digest of a repository (empty if it does not exist)."""
        repo = self._repos.get(path)
        return dict(repo.tags) if repo else {}

    def resolve(self, path: str, reference: str) -> str | None:
        """The digest a tag or digest reference names, or None."""
        repo = self._repos.get(path)
        if repo is None:
            return None
        if reference in repo.manifests:
            return reference
        return repo.tags.get(reference)

    def manifest_bytes(self, path: str, digest: str) -> bytes:
        return self._repo(path).manifests[digest].body

    def _repo(self, path: str) -> _Repository:
        repo = self._repos.get(path)
        if repo is None:
            raise KeyError(f"no repository {path!r}")
        return repo

    # -- faults -----------------------------------------------------------------------------

    def fail_next(
        self, n: int | None = 1, status: int = 503, *, kind: RequestKind | None = None
    ) -> None:
        """Answer the next ``n`` requests (of ``kind``) with ``status``; None: until cleared."""
        self._pending.append(_PendingFault("fail", n, kind, status=status))

    def hang_next(
        self, n: int | None = 1, seconds: float = 30.0, *, kind: RequestKind | None = None
    ) -> None:
        """Hold the next ``n`` requests ``seconds`` before answering: past a client's timeout."""
        self._pending.append(_PendingFault("hang", n, kind, seconds=seconds))

    def malform_next(
        self,
        n: int | None = 1,
        how: Malformation = "truncated",
        *,
        kind: RequestKind | None = "tags_list",
    ) -> None:
        """Corrupt the JSON body of the next ``n`` successful answers (of ``kind``)."""
        self._pending.append(_PendingFault("malform", n, kind, how=how))

    def drop_next(self, n: int | None = 1, *, kind: RequestKind | None = None) -> None:
        """Close the connection of the next ``n`` requests without answering."""
        self._pending.append(_PendingFault("drop", n, kind))

    def clear_faults(self) -> None:
        self._pending.clear()
        self.faults = Faults()

    def _take_fault(self, action: str, kind: RequestKind) -> _PendingFault | None:
        for fault in self._pending:
            if fault.action == action and (fault.kind is None or fault.kind == kind):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._pending.remove(fault)
                return fault
        return None

    # -- request log ------------------------------------------------------------------------

    def count(
        self,
        kind: RequestKind | None = None,
        path: str | None = None,
        since: float | None = None,
        *,
        status: int | None = None,
    ) -> int:
        """Logged requests matching every filter given.

        ``path`` matches a repository path or the request path; ``since`` is a
        ``time.monotonic()`` value.
        """
        return sum(
            1
            for entry in self.log
            if (kind is None or entry.kind == kind)
            and (path is None or path in (entry.repository, entry.path))
            and (since is None or entry.monotonic >= since)
            and (status is None or entry.status == status)
        )

    def max_in_window(self, window_seconds: float, *, client: str | None = None) -> int:
        """The most requests (all of them, 429s included) in any window of that length."""
        return max_in_window(
            (e.monotonic for e in self.log if client is None or e.client == client),
            window_seconds,
        )

    def clear_log(self) -> None:
        self.log.clear()

    # -- HTTP -------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind, repository, reference = _classify(request.method, request.path)
        if self.settings.metadata and (
            request.path == "/" or request.path.startswith("/computeMetadata/")
        ):
            kind = "metadata"
        if self.settings.service_account_keys and request.path == "/token":
            kind = "oauth"
        arrived = _arrival(request)
        entry = LoggedRequest(
            monotonic=arrived,
            wall=time.time() - (time.monotonic() - arrived),
            client=request.remote or "",
            method=request.method,
            path=request.path,
            kind=kind,
            repository=repository,
            query=request.query_string,
        )
        self.log.append(entry)
        try:
            response = await self._answer(request, entry, reference)
        except _Drop:
            transport = request.transport
            if transport is not None:
                transport.abort()
            # aiohttp ends a handler on a closed transport quietly with this.
            raise asyncio.CancelledError from None
        response.headers["Docker-Distribution-API-Version"] = "registry/2.0"
        entry.status = response.status
        return response

    async def _answer(
        self, request: web.Request, entry: LoggedRequest, reference: str | None
    ) -> web.Response:
        if entry.kind == "oauth":
            return await self._oauth_token(request)
        if entry.kind == "metadata":
            # Not the registry: no registry quota, but injected faults apply.
            if self._take_fault("drop", entry.kind) is not None:
                raise _Drop
            fail = self._take_fault("fail", entry.kind)
            if fail is not None:
                return web.Response(status=fail.status, text="injected failure")
            return self._metadata(request)
        if not request.path.startswith("/v2"):
            return _errors("NOT_FOUND", "not a registry path", 404)
        if not self._admit(entry):
            return self._quota_exceeded()
        await self._sleep(self.faults.latency)
        hang = self._take_fault("hang", entry.kind)
        if hang is not None:
            await self._sleep(hang.seconds)
        if self._stopping.is_set():
            # Stopping must not wait for held requests: the server is going away.
            raise _Drop
        if self._take_fault("drop", entry.kind) is not None:
            raise _Drop
        fail = self._take_fault("fail", entry.kind)
        if fail is not None:
            if fail.status == 429:
                return self._quota_exceeded()
            return _errors("UNAVAILABLE", "injected failure", fail.status)
        response = await self._dispatch(request, entry, reference)
        if response.status == 200 and request.method == "GET" and response.body:
            malform = self._take_fault("malform", entry.kind)
            if malform is not None:
                body = response.body
                assert isinstance(body, bytes)
                response.body = _malformed(body, malform.how)
        return response

    def _admit(self, entry: LoggedRequest) -> bool:
        limit = self.settings.quota_requests
        if limit is None:
            return True
        span = self.settings.quota_window
        at = entry.monotonic
        # Arrival order, not handling order: a request the loop reaches late may have
        # arrived before one already counted, so the log is kept sorted and every
        # window holding this arrival is checked, not only the one ending at it.
        window = self._windows.setdefault(entry.client, [])
        del window[: bisect.bisect_right(window, max(at, window[-1] if window else at) - 2 * span)]
        later = window[bisect.bisect_right(window, at) :]
        admitted = all(
            bisect.bisect_right(window, end) - bisect.bisect_right(window, end - span) < limit
            for end in (at, *later)
            if end - span < at
        )
        if admitted or self.settings.quota_counts_rejected:
            bisect.insort(window, at)
        return admitted

    def _quota_exceeded(self) -> web.Response:
        headers = {}
        if self.settings.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(self.settings.retry_after))
        return web.Response(status=429, text=QUOTA_BODY, headers=headers)

    async def _dispatch(
        self, request: web.Request, entry: LoggedRequest, reference: str | None
    ) -> web.Response:
        if entry.kind == "token":
            return self._token(request)
        if entry.kind == "other":
            if request.method not in ("GET", "HEAD"):
                return _errors("UNSUPPORTED", "the emulator is read-only", 405)
            return _errors("NAME_UNKNOWN", "unknown path", 404)
        denied = self._authorize(request, entry.repository)
        if denied is not None:
            return denied
        if entry.kind == "ping":
            return web.json_response({})
        assert entry.repository is not None
        if entry.kind == "tags_list":
            return self._tags_list(request, entry.repository)
        assert reference is not None
        if entry.kind == "blob":
            return self._blob(entry.repository, reference)
        return self._manifest(request, entry.repository, reference)

    # -- auth -------------------------------------------------------------------------------

    def _challenge(self, request: web.Request, repository: str | None) -> web.Response:
        parts = [f'realm="{request.scheme}://{self.service}/v2/token"']
        if self.settings.mode == "gcr":
            parts.append(f'service="{self.service}"')
        if repository is not None:
            parts.append(f'scope="repository:{repository}:pull"')
        return _errors(
            "UNAUTHORIZED",
            "You don't have the needed permissions to perform this operation, and you may "
            "have invalid credentials.",
            401,
            **{"WWW-Authenticate": "Bearer " + ",".join(parts)},
        )

    def _authorize(self, request: web.Request, repository: str | None) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer":
            return None if not self.settings.auth_required else self._challenge(request, repository)
        token = self._tokens.get(credential.strip())
        now = time.monotonic()
        if token is None or token.expires <= now:
            self._tokens.pop(credential.strip(), None)
            return self._challenge(request, repository)
        if (
            repository is not None
            and self.settings.enforce_scope
            and repository not in token.repositories
        ):
            return self._challenge(request, repository)
        return None

    def _token(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return _errors("UNSUPPORTED", "use GET for tokens", 405)
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            user, _, password = decoded.partition(":")
            if user not in TOKEN_USERS or not self._access_token_valid(password):
                return _errors("UNAUTHORIZED", "invalid credentials", 401)
        elif self.settings.auth_required:
            return _errors("UNAUTHORIZED", "authentication required", 401)
        repositories = set()
        for scope in request.query.getall("scope", []):
            for single in scope.split(" "):
                match = _SCOPE_RE.fullmatch(single)
                if match and ("pull" in match["actions"].split(",") or match["actions"] == "*"):
                    repositories.add(match["name"])
        value = secrets.token_urlsafe(32)
        ttl = self.settings.token_ttl
        self._tokens = {k: t for k, t in self._tokens.items() if t.expires > time.monotonic()}
        self._tokens[value] = _Token(time.monotonic() + ttl, frozenset(repositories))
        expires_in: int | float = int(ttl) if float(ttl).is_integer() else ttl
        return web.json_response(
            {
                "token": value,
                "access_token": value,
                "expires_in": expires_in,
                "issued_at": _iso(datetime.now(UTC)),
            }
        )

    def _access_token_valid(self, token: str) -> bool:
        if token in self.settings.access_tokens:
            return True
        expires = self._access_tokens.get(token)
        return expires is not None and expires > time.monotonic()

    # -- OAuth token endpoint ---------------------------------------------------------------

    async def _oauth_token(self, request: web.Request) -> web.Response:
        """Google's ``/token`` for the JWT-bearer grant a service-account key file makes."""
        from google.auth import exceptions as auth_exceptions
        from google.auth import jwt

        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        assertion = str(form.get("assertion", ""))
        # google-auth signs for Google's own endpoint whatever token_uri says,
        # and Google checks exactly that audience.
        audience = "https://oauth2.googleapis.com/token"
        try:
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                assertion, certs=self.settings.service_account_keys, audience=audience
            )
        except (ValueError, auth_exceptions.GoogleAuthError):
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                status=400,
            )
        if "scope" not in claims:
            return web.json_response({"error": "invalid_scope"}, status=400)
        return web.json_response(self._issue_access_token())

    def _issue_access_token(self) -> dict[str, Any]:
        value = "ya29.emulator-" + secrets.token_urlsafe(24)
        # Google sends whole seconds.
        ttl = max(1, int(self.settings.metadata_token_ttl))
        now = time.monotonic()
        self._access_tokens = {k: e for k, e in self._access_tokens.items() if e > now}
        self._access_tokens[value] = now + ttl
        return {"access_token": value, "expires_in": ttl, "token_type": "Bearer"}

    # -- metadata server --------------------------------------------------------------------

    def _metadata(self, request: web.Request) -> web.Response:
        """The parts of the GCE metadata server that google-auth's ADC uses.

        ``/`` answers google-auth's ping (it checks the ``Metadata-Flavor: Google``
        response header); everything under ``/computeMetadata/v1/`` wants the
        ``Metadata-Flavor: Google`` request header, as the real server does.
        """
        flavor = {"Metadata-Flavor": METADATA_FLAVOR}
        if request.method != "GET":
            return web.Response(status=405, text="method not allowed", headers=flavor)
        if request.path == "/":
            return web.Response(text="computeMetadata/\n", headers=flavor)
        if request.headers.get("Metadata-Flavor") != METADATA_FLAVOR:
            return web.Response(
                status=403, text="Missing required header: Metadata-Flavor", headers=flavor
            )
        rest = request.path[len(METADATA_ROOT) :] if request.path.startswith(METADATA_ROOT) else ""
        # The account answers to "default" and to its email (google-auth asks by
        # email once it has learnt it).
        prefix = "instance/service-accounts/"
        if rest.startswith(prefix + self.settings.service_account):
            rest = prefix + "default" + rest[len(prefix + self.settings.service_account) :]
        account = prefix + "default"
        if rest == "project/project-id":
            return web.Response(text=self.settings.project_id, headers=flavor)
        if rest == "universe/universe-domain":
            return web.Response(text="googleapis.com", headers=flavor)
        if rest in (account, account + "/"):
            info = {
                "aliases": ["default"],
                "email": self.settings.service_account,
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            }
            return web.json_response(info, headers=flavor)
        if rest == account + "/token":
            return web.json_response(self._issue_access_token(), headers=flavor)
        return web.Response(status=404, text="not found", headers=flavor)

    # -- registry API -----------------------------------------------------------------------

    def _children(self, path: str) -> list[str]:
        prefix = path + "/"
        return sorted(
            {p[len(prefix) :].split("/", 1)[0] for p in self._repos if p.startswith(prefix)}
        )

    def _entry(self, manifest: _Manifest, tags: list[str]) -> dict[str, Any]:
        if self.settings.mode == "gcr":
            return {
                "imageSizeBytes": str(manifest.size),
                "layerId": "",
                "mediaType": manifest.media_type,
                "tag": tags,
                "timeCreatedMs": str(manifest.created_ms),
                "timeUploadedMs": str(manifest.uploaded_ms),
            }
        return {
            "imageSizeBytes": str(manifest.size),
            "mediaType": manifest.media_type,
            "tag": tags,
            "timeCreatedMs": manifest.created_ms,
            "timeUploadedMs": manifest.uploaded_ms,
        }

    def _tags_list(self, request: web.Request, path: str) -> web.Response:
        repo = self._repos.get(path)
        children = self._children(path)
        if repo is None and not children:
            return _errors("NAME_UNKNOWN", f"Repository {path!r} not found", 404)
        repo = repo or _Repository()
        limit = self.settings.page_size_max
        if "n" in request.query:
            try:
                n = int(request.query["n"])
            except ValueError:
                return _errors("PAGINATION_NUMBER_INVALID", "n must be an integer", 400)
            if n < 0:
                return _errors("PAGINATION_NUMBER_INVALID", "n must not be negative", 400)
            limit = n if limit is None else min(n, limit)
        last = request.query.get("last")
        remaining = sorted(t for t in repo.tags if last is None or t > last)
        page = remaining if limit is None else remaining[:limit]
        more = len(page) < len(remaining)
        by_digest: dict[str, list[str]] = {}
        for tag, digest in sorted(repo.tags.items()):
            by_digest.setdefault(digest, []).append(tag)
        if self.settings.manifest_paging == "full" or (last is None and not more):
            digests = list(repo.manifests)
        else:
            digests = list(dict.fromkeys(repo.tags[t] for t in page))
            if last is None:
                digests += [d for d in repo.manifests if d not in by_digest]
        body = {
            "child": children,
            "manifest": {d: self._entry(repo.manifests[d], by_digest.get(d, [])) for d in digests},
            "name": path,
            "tags": page,
        }
        headers = {}
        if more:
            headers["Link"] = (
                f'</v2/{path}/tags/list?n={limit}&last={quote(page[-1], safe="")}>; rel="next"'
            )
        return web.Response(
            body=json.dumps(body).encode(), headers={"Content-Type": JSON_TYPE, **headers}
        )

    def _manifest(self, request: web.Request, path: str, reference: str) -> web.Response:
        repo = self._repos.get(path)
        if repo is None:
            return _errors("NAME_UNKNOWN", f"Repository {path!r} not found", 404)
        digest = reference if _DIGEST_RE.fullmatch(reference) else repo.tags.get(reference)
        manifest = repo.manifests.get(digest) if digest else None
        if manifest is None:
            return _errors("MANIFEST_UNKNOWN", f"Manifest {reference!r} not found", 404)
        if self.settings.strict_accept and manifest.media_type in INDEX_TYPES:
            accepted = {
                part.split(";")[0].strip()
                for part in ",".join(request.headers.getall("Accept", [])).split(",")
            }
            if manifest.media_type not in accepted:
                if manifest.media_type == OCI_INDEX:
                    return _errors(
                        "MANIFEST_UNKNOWN",
                        "OCI index found, but accept header does not support OCI indexes",
                        404,
                    )
                # The distribution registry's fallback for clients that know no lists.
                amd64 = [repo.manifests[c] for c in manifest.children]
                manifest = next(m for m in amd64 if m.platform == "linux/amd64")
        return web.Response(
            body=manifest.body,
            headers={
                "Content-Type": manifest.media_type,
                "Docker-Content-Digest": manifest.digest,
                "ETag": f'"{manifest.digest}"',
            },
        )

    def _blob(self, path: str, digest: str) -> web.Response:
        repo = self._repos.get(path)
        if repo is None:
            return _errors("NAME_UNKNOWN", f"Repository {path!r} not found", 404)
        blob = repo.blobs.get(digest)
        if blob is None:
            return _errors("BLOB_UNKNOWN", f"Blob {digest!r} not found", 404)
        return web.Response(
            body=blob,
            headers={"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest},
        )


def _malformed(body: bytes, how: Malformation) -> bytes:
    if how == "truncated":
        return body[: len(body) // 2]
    if how == "garbage":
        return b"\x00}{<html"
    try:
        document = json.loads(body)
    except ValueError:
        return body[: len(body) // 2]
    manifest = document.get("manifest") if isinstance(document, dict) else None
    if isinstance(manifest, dict) and manifest:
        for entry in manifest.values():
            entry["timeUploadedMs"] = "yesterday"
    elif isinstance(document, dict):
        document["manifest"] = ["not", "a", "map"]
    return json.dumps(document).encode()


def _classify(method: str, path: str) -> tuple[RequestKind, str | None, str | None]:
    """(kind, repository, reference) of a request path."""
    if path in ("/v2", "/v2/"):
        return "ping", None, None
    if path == "/v2/token":
        return "token", None, None
    if method not in ("GET", "HEAD"):
        return "other", None, None
    match = _TAGS_RE.fullmatch(path)
    if match:
        return "tags_list", match["name"], None
    match = _REF_RE.fullmatch(path)
    if match:
        if match["what"] == "blobs":
            return "blob", match["name"], match["ref"]
        kind: RequestKind = "manifest_head" if method == "HEAD" else "manifest_get"
        return kind, match["name"], match["ref"]
    return "other", None, None


# -- standalone ---------------------------------------------------------------------------


def _parse_push(text: str) -> tuple[str, str, ImageKind]:
    path, _, rest = text.partition(":")
    tag, _, kind = rest.partition(":")
    if not path or not tag or kind not in ("", "oci", "docker", "index", "list"):
        raise argparse.ArgumentTypeError(f"expected PATH:TAG[:oci|docker|index|list], got {text!r}")
    image_kind = cast(ImageKind, kind or "oci")
    return path, tag, image_kind


async def _serve(settings: EmulatorSettings, pushes: list[tuple[str, str, ImageKind]]) -> None:
    async with GoogleRegistryEmulator(settings) as emu:
        for path, tag, kind in pushes:
            digest = emu.push(path, tag, kind=kind)
            print(f"pushed {emu.service}/{path}:{tag} {digest}", flush=True)
        auth = "anonymous" if not settings.auth_required else "token auth"
        print(f"google registry emulator ({settings.mode}, {auth}) on {emu.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m watcher_testing.emulator``: serve until SIGINT or SIGTERM (for the demo)."""
    parser = argparse.ArgumentParser(
        prog="python -m watcher_testing.emulator", description="Google registry emulator."
    )
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--mode", choices=("gcr", "artifact"), default="gcr")
    parser.add_argument("--host", default=None, help="host for the realm/service")
    parser.add_argument("--anonymous", action="store_true", help="serve requests without auth")
    parser.add_argument(
        "--access-token",
        action="append",
        default=None,
        help=f"accepted OAuth access token (repeatable; default {DEFAULT_ACCESS_TOKEN})",
    )
    parser.add_argument("--token-ttl", type=float, default=3600.0)
    parser.add_argument("--quota", type=int, default=None, help="requests per window per IP")
    parser.add_argument("--quota-window", type=float, default=600.0, help="seconds")
    parser.add_argument("--retry-after", type=float, default=None)
    parser.add_argument("--page-size-max", type=int, default=1000)
    parser.add_argument(
        "--metadata",
        action="store_true",
        help="also serve a GCE metadata server (set GCE_METADATA_HOST/GCE_METADATA_IP to it)",
    )
    parser.add_argument("--metadata-token-ttl", type=float, default=3600.0)
    parser.add_argument(
        "--pubsub",
        default=None,
        metavar="HOST:PORT",
        help="a Pub/Sub emulator: publish each push on the topic gcr of the image's project",
    )
    parser.add_argument(
        "--push",
        action="append",
        type=_parse_push,
        default=[],
        metavar="PATH:TAG[:KIND]",
        help="image to store at start (repeatable)",
    )
    args = parser.parse_args(argv)
    settings = EmulatorSettings(
        mode=args.mode,
        host=args.host,
        bind=args.bind,
        port=args.port,
        auth_required=not args.anonymous,
        access_tokens=set(args.access_token or [DEFAULT_ACCESS_TOKEN]),
        token_ttl=args.token_ttl,
        quota_requests=args.quota,
        quota_window=args.quota_window,
        retry_after=args.retry_after,
        page_size_max=args.page_size_max,
        metadata=args.metadata,
        metadata_token_ttl=args.metadata_token_ttl,
        pubsub=args.pubsub,
    )
    asyncio.run(_serve(settings, args.push))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
