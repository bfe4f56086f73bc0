"""HTTP on ``server.port``: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from watcher.errors import ListenError

Readiness = Callable[[], list[str]]


def make_app(registry: CollectorRegistry, readiness: Readiness) -> web.Application:
    """``readiness`` returns what is not ready yet (empty: ready)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        # Alive as long as the event loop answers.
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        missing = readiness()
        if missing:
            return web.Response(status=503, text="not ready: " + "; ".join(missing) + "\n")
        return web.Response(text="ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@asynccontextmanager
async def serve(
    registry: CollectorRegistry, readiness: Readiness, port: int, host: str = "0.0.0.0"
) -> AsyncIterator[int]:
    """Serve until the context exits; yields the bound port (``port`` 0 picks a free one)."""
    runner = web.AppRunner(make_app(registry, readiness), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            # Another process on the port (a second replica on one host, a
            # leftover), or a port below 1024 without the right: one line, not a
            # traceback from deep inside asyncio.
            why = exc.strerror or str(exc)
            raise ListenError(f"cannot listen on {host}:{port} (server.port): {why}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        yield bound
    finally:
        await runner.cleanup()
