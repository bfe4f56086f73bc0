"""A baseline client that looks images up the way argocd-image-updater does today.

It runs as its own process (``python -m benchmarks.baseline SPEC.json OUT.json``), from
its own client address (127.0.0.2, so the emulator's per-IP quota treats it as a
separate installation), against the same emulator, environments and pushes as the
watcher in the ``reference`` scenario. Each behaviour and where it comes from
(argoproj-labs/argocd-image-updater):

- **Per application and image, every cycle.** The update loop walks every Argo CD
  Application (one per environment x application) and, for each image it
  carries, creates a fresh registry client and looks the image up
  (``pkg/argocd/update.go``: ``UpdateApplication`` -> ``registry.NewClient`` ->
  ``GetTags``). Nothing is shared between applications that use one image.
- **``/v2/`` ping, then a token.** ``newRegistry`` pings ``/v2`` when the endpoint
  has ``ping`` set (``pkg/registry/client.go``: ``DoInitialPing``); the token
  transport of the docker-registry client then fetches a bearer token for the
  repository scope, per client, i.e. per application and image. Modelled as one
  ping and one token request per (application, image).
- **``tags/list`` pages** (``RegistryClient.Tags`` follows ``Link``).
- **Digest strategy: a manifest GET and a config-blob GET, uncached.**
  ``pkg/registry/registry.go`` ``GetTags``: for ``StrategyNewestBuild`` and
  ``StrategyDigest`` every candidate tag's manifest is fetched
  (``ManifestForTag``) and ``TagMetadata`` reads the config blob
  (``pkg/registry/client.go``; older releases also sent a blob HEAD first, which
  this baseline leaves out). ``UpdateStrategy.IsCacheable()`` is false for
  ``StrategyDigest`` (``pkg/image/version.go``), so this happens every cycle.
  For ``newest-build`` the same two requests are sent per matching tag, but the
  result is cached per (image, tag) for the life of the process.
- **No tag cache across applications, no Google extension**: the ``manifest``
  map of Google's ``tags/list`` is ignored.
- **A per-process limiter**: ``limit`` in ``registries.conf``, "max. number of
  requests per second", default 20 (``docs/configuration/registries.md``,
  section "Configuring a request rate limit"), implemented with
  ``go.uber.org/ratelimit`` (evenly spaced, slack 10) around the HTTP transport
  (``rateLimitTransport`` in ``pkg/registry/client.go``). Time is compressed by the
  scenario's factor, so the rate here is ``20 x factor``.
- **Applications in parallel**: ``--max-concurrency`` (default 10); images of one
  application one after the other.
- **No 429 handling**: a 429 is an error for that image this cycle
  (issue argoproj-labs/argocd-image-updater#313, "Quota Exceeded." from GCR at the
  default 2-minute interval); nothing backs off.
- **The loop**: one update cycle, then ``--interval`` (default 2m) of sleep
  (``cmd/run.go``), so a cycle longer than the interval pushes the next back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


class Limiter:
    """go.uber.org/ratelimit's leaky bucket: takes are spaced 1/rate apart, slack 10."""

    def __init__(self, rate: float, slack: int = 10) -> None:
        self.per = 1.0 / rate
        self.max_slack = -slack * self.per
        self.last = 0.0
        self.sleep_for = 0.0
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self.last == 0.0:
                self.last = now
                return
            self.sleep_for += self.per - (now - self.last)
            self.sleep_for = max(self.sleep_for, self.max_slack)
            if self.sleep_for > 0:
                await asyncio.sleep(self.sleep_for)
                self.last = now + self.sleep_for
                self.sleep_for = 0.0
            else:
                self.last = now


@dataclass
class Cycle:
    started: float  # monotonic
    ended: float = 0.0
    complete: bool = False
    requests: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    errors: int = 0


class Baseline:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.base = spec["url"].rstrip("/")
        self.service = spec["service"]
        self.limiter = Limiter(spec["rate"])
        basic = base64.b64encode(f"{spec['user']}:{spec['password']}".encode()).decode()
        self.auth = {"Authorization": f"Basic {basic}"}
        self.tag_cache: dict[tuple[str, str], str] = {}
        self.cycles: list[Cycle] = []
        # (image, tag) -> monotonic time the baseline first saw each digest/tag.
        self.seen: dict[str, float] = {}

    async def request(
        self, session: aiohttp.ClientSession, cycle: Cycle, kind: str, url: str, **kw: Any
    ) -> tuple[int, Any, bytes]:
        await self.limiter.take()
        cycle.requests[kind] += 1
        async with session.get(url, allow_redirects=False, **kw) as response:
            body = await response.read()
            if response.status == 429:
                cycle.throttled += 1
            return response.status, response.headers, body

    async def image(
        self, session: aiohttp.ClientSession, cycle: Cycle, item: dict[str, Any]
    ) -> None:
        path, tag, strategy = item["image"], item["tag"], item["strategy"]
        await self.request(session, cycle, "ping", f"{self.base}/v2/")
        status, _, body = await self.request(
            session,
            cycle,
            "token",
            f"{self.base}/v2/token",
            params={"service": self.service, "scope": f"repository:{path}:pull"},
            headers=self.auth,
        )
        if status != 200:
            raise RuntimeError(f"token: {status}")
        headers = {"Authorization": f"Bearer {json.loads(body)['token']}"}
        tags: list[str] = []
        url: str | None = f"{self.base}/v2/{path}/tags/list"
        while url is not None:
            status, response_headers, body = await self.request(
                session, cycle, "tags_list", url, headers=headers
            )
            if status != 200:
                raise RuntimeError(f"tags/list: {status}")
            tags.extend(json.loads(body).get("tags") or [])
            link = response_headers.get("Link")
            match = re.match(r"<([^>]+)>", link) if link else None
            url = f"{self.base}{match.group(1)}" if match else None
        if strategy == "digest":
            candidates = [t for t in tags if t == tag]
        else:
            pattern = re.compile(item["pattern"])
            candidates = [t for t in tags if pattern.fullmatch(t)]
        for candidate in candidates:
            if strategy != "digest" and (path, candidate) in self.tag_cache:
                continue
            status, response_headers, body = await self.request(
                session,
                cycle,
                "manifest_get",
                f"{self.base}/v2/{path}/manifests/{candidate}",
                headers={**headers, "Accept": MANIFEST_ACCEPT},
            )
            if status != 200:
                raise RuntimeError(f"manifest: {status}")
            digest = response_headers.get("Docker-Content-Digest", "")
            config = json.loads(body).get("config", {}).get("digest")
            if config:
                status, _, _ = await self.request(
                    session, cycle, "blob", f"{self.base}/v2/{path}/blobs/{config}", headers=headers
                )
                if status != 200:
                    raise RuntimeError(f"blob: {status}")
            self.seen.setdefault(digest if strategy == "digest" else candidate, time.monotonic())
            if strategy != "digest":
                self.tag_cache[(path, candidate)] = digest

    async def application(
        self, session: aiohttp.ClientSession, cycle: Cycle, app: dict[str, Any]
    ) -> None:
        for item in app["images"]:
            try:
                await self.image(session, cycle, item)
            except (RuntimeError, aiohttp.ClientError, ValueError):
                cycle.errors += 1

    async def cycle(self, session: aiohttp.ClientSession) -> None:
        cycle = Cycle(time.monotonic())
        self.cycles.append(cycle)
        gate = asyncio.Semaphore(self.spec.get("concurrency", 10))

        async def one(app: dict[str, Any]) -> None:
            async with gate:
                await self.application(session, cycle, app)

        await asyncio.gather(*(one(app) for app in self.spec["applications"]))
        cycle.ended = time.monotonic()
        cycle.complete = True

    async def run(self, duration: float) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, local_addr=(self.spec.get("bind", "127.0.0.2"), 0)
        )
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(self.cycle(session), deadline - time.monotonic())
                except TimeoutError:
                    self.cycles[-1].ended = time.monotonic()
                    break
                await asyncio.sleep(
                    min(self.spec["interval"], max(0.0, deadline - time.monotonic()))
                )

    def result(self) -> dict[str, Any]:
        return {
            "cycles": [
                {**asdict(c), "requests": dict(c.requests), "total": sum(c.requests.values())}
                for c in self.cycles
            ],
            "seen": self.seen,
        }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    baseline = Baseline(spec)
    asyncio.run(baseline.run(spec["duration"]))
    Path(args[1]).write_text(json.dumps(baseline.result()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
