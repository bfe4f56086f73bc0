"""The daemon's commands: ``run``, ``once``, ``check``, ``shards``, ``budget``, ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from watcher import config, logs, reports
from watcher.cluster.connection import endpoint, verify
from watcher.engine import Engine
from watcher.server import serve

log = structlog.get_logger()


async def _check_redis(cfg: config.Config) -> None:
    """Stop on a Redis that can never work as configured; only note one that is down now.

    A Redis that is down at start is handled as one that goes down later
    (local budget, retries), so a replica starts even while Redis restarts.
    """
    if not cfg.redis.url:
        return
    problem = await verify(cfg.redis, cfg.interval)
    if problem is not None:
        log.warning(
            "redis unreachable at start; working without it until it answers", reason=problem
        )


async def _run(cfg: config.Config) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "starting",
        config=cfg.source,
        interval=cfg.interval,
        git=cfg.git.url,
        branches=list(cfg.git.branches),
        # Where Redis is, never its URL: that may carry a password.
        budget="redis cluster" if cfg.redis.cluster else "redis" if cfg.redis.url else "in-process",
        redis=endpoint(cfg.redis.url) if cfg.redis.url else None,
    )
    await _check_redis(cfg)
    async with (
        Engine(cfg) as watcher,
        serve(
            watcher.metrics.registry,
            watcher.readiness,
            cfg.server.port,
            status=watcher.board.status,
        ) as port,
    ):
        log.info(
            "serving",
            port=port,
            paths=["/", "/status.json", "/metrics", "/healthz", "/readyz"],
        )
        await watcher.run(stop)
    if watcher.fatal is not None:
        log.error("stopped: a task the daemon cannot run without failed", task=watcher.fatal)
        return 1
    log.info("stopped")
    return 0


async def _once(cfg: config.Config, dry_run: bool) -> int:
    await _check_redis(cfg)
    async with Engine(cfg) as watcher:
        report = await watcher.cycle(dry_run=dry_run)
    verb = "would update" if dry_run else "updated"
    for update in report.updates:
        outcome = report.outcomes.get(update.block.branch)
        if dry_run or (outcome and update in outcome.applied):
            print(f"{verb} {update.describe()}")
    for image, blocks in report.watch.images.items():
        for block in blocks:
            if block.steer.state == "held":
                steer = block.steer
                print(
                    f"held {block.id}: {steer.field} {steer.value or '(none)'} "
                    f"({steer.holds}; the watcher's was {steer.replaced or '(none)'}) [{image}]"
                )
    for branch, outcome in sorted(report.outcomes.items()):
        if outcome.result == "committed":
            print(f"committed {outcome.commit} on {branch} ({len(outcome.applied)} update(s))")
        elif outcome.result in ("error", "conflict"):
            print(
                f"pending on {branch}: {outcome.message} "
                f"({len(outcome.pending)} update(s) retried next cycle)"
            )
    for image, reason in sorted(report.failed_images.items()):
        print(f"skipped image {image}: {reason}")
    print(
        f"{len(report.watch.images)} image(s), {report.watch.block_count} block(s) on "
        f"{len(report.watch.branches)} branch(es): {len(report.updates)} update(s)"
    )
    return 0


async def _check(cfg: config.Config) -> int:
    async with Engine(cfg) as watcher:
        watch = await watcher.discover(log_problems=False, holds=False)
    for problem in watch.problems:
        print(f"{problem}", file=sys.stderr)
    print(
        f"{len(watch.branches)} branch(es), {len(watch.images)} image(s), "
        f"{watch.block_count} valid block(s), {len(watch.problems)} problem(s)"
    )
    return 2 if watch.problems else 0


async def _report(cfg: config.Config, command: str, count: int | None) -> int:
    async with Engine(cfg) as watcher:
        watch = await watcher.discover(log_problems=False, holds=False)
    if command == "shards":
        print(reports.shards_report(cfg, watch, count))
    else:
        print(reports.budget_report(cfg, watch))
    return 0


def run(args: argparse.Namespace, cfg: config.Config) -> int:
    """One of the daemon's commands, as ``args.command`` names it."""
    if args.command == "run":
        return asyncio.run(_run(cfg))
    if args.command == "once":
        return asyncio.run(_once(cfg, args.dry_run))
    if args.command in ("shards", "budget"):
        return asyncio.run(_report(cfg, args.command, getattr(args, "count", None)))
    return asyncio.run(_check(cfg))


def demo(workdir: str | None, keep: bool) -> int:
    try:
        # The demo runs on the test harness, which a checkout installs and
        # the production image leaves out.
        from watcher_testing.demo import demo
    except ImportError:
        print(
            "watcher demo needs a checkout of the repository "
            "(bash .ci/install && .venv/bin/watcher demo); this installation has no demo",
            file=sys.stderr,
        )
        return 2
    logs.configure("warning", sys.stderr)
    return demo(workdir, keep=keep)
