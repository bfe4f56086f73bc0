"""HTTP on ``server.port``: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``, and for
people ``/`` (the status page, :mod:`watcher.web.page`) and ``/status.json``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from watcher.errors import ListenError
from watcher.steer.status import STATUS_STATES, Status
from watcher.web import page

Readiness = Callable[[], list[str]]
StatusSource = Callable[[], Status]


def make_app(
    registry: CollectorRegistry, readiness: Readiness, status: StatusSource | None = None
) -> web.Application:
    """``readiness`` returns what is not ready yet (empty: ready); ``status`` the board
    the page and ``/status.json`` show (none: those paths answer 404)."""

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
    if status is not None:
        _status_routes(app, status)
    return app


def _status_routes(app: web.Application, status: StatusSource) -> None:
    async def index(request: web.Request) -> web.Response:
        state = request.query.get("state") or None
        if state is not None and state not in STATUS_STATES:
            return web.Response(
                status=400, text=f"state must be one of {', '.join(STATUS_STATES)}\n"
            )
        branch = request.query.get("branch") or None
        # Thousands of rows take tens of milliseconds (benchmarks/steering.py): off
        # the loop, so that a page view never delays a lease renewal.
        text = await asyncio.to_thread(page.render, status(), branch=branch, state=state)
        return web.Response(
            text=text,
            content_type="text/html",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP},
        )

    async def status_json(_: web.Request) -> web.Response:
        # The status is immutable once built; serialising thousands of rows takes a
        # few hundred milliseconds (benchmarks/steering.py), off the loop.
        text = await asyncio.to_thread(_dumps, status())
        return web.Response(
            text=text, content_type="application/json", headers={"Cache-Control": "no-store"}
        )

    app.router.add_get("/", index)
    app.router.add_get("/status.json", status_json)


def _dumps(status: Status) -> str:
    return json.dumps(status.to_json())


# Nothing but the inline style sheet: no script, no frame, no outside request.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


@asynccontextmanager
async def serve(
    registry: CollectorRegistry,
    readiness: Readiness,
    port: int,
    host: str = "0.0.0.0",
    status: StatusSource | None = None,
) -> AsyncIterator[int]:
    """Serve until the context exits; yields the bound port (``port`` 0 picks a free one)."""
    runner = web.AppRunner(make_app(registry, readiness, status), access_log=None)
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
