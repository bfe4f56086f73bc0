"""``watcher``: the command line.

Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog

from watcher import __version__, config, logs, reports
from watcher.engine import Engine
from watcher.errors import ConfigError, CredentialsError, GitError
from watcher.registry.auth import credentials_for
from watcher.server import serve

log = structlog.get_logger()

DESCRIPTION = """\
Keeps GitOps environment branches pointing at the container images teams push.

It finds every image block (a mapping with `repository` and `tag`) in the
values files of every environment branch, looks each image up once per
interval within the registry's request budget, and commits `shasum` or
`overrideTag` updates back, one commit per branch, never force-pushing.
"""

EPILOG = """\
exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage
environment: WATCHER_GIT_URL and WATCHER_REDIS_URL override git.url and redis.url
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watcher",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--config",
            default="shards.yaml",
            metavar="FILE",
            help="the configuration file (default: %(default)s)",
        )
        p.add_argument(
            "--log-level",
            default="info",
            choices=["debug", "info", "warning", "error"],
            help="least severity logged (default: %(default)s)",
        )
        return p

    command("run", "Run the daemon: check every image once per interval until SIGTERM/SIGINT.")
    once = command("once", "Run one full cycle over every image, print each update, and exit.")
    once.add_argument(
        "--dry-run", action="store_true", help="decide and print updates but write nothing"
    )
    command(
        "check",
        "Validate the configuration and every image block on every environment branch.",
    )
    shards = command(
        "shards",
        "Show which shard owns each image, the load per shard, and what would move at "
        "--count N shards.",
    )
    shards.add_argument(
        "--count", type=int, metavar="N", help="compare with N shards: which images would move"
    )
    command(
        "budget",
        "Show the requests per window the current watch set needs against each budget, and "
        "the shortest safe interval.",
    )
    demo = sub.add_parser(
        "demo",
        help="Run a local demo: a real registry, a git remote with environment branches.",
        description="Start Debian's docker-registry and a local bare git remote with "
        "environment branches, run the daemon against them, push a new image build and "
        "show the commits landing. Needs docker-registry and git installed.",
    )
    demo.add_argument("--workdir", help="where to keep the demo's files (default: a temp dir)")
    demo.add_argument("--keep", action="store_true", help="keep the files when it ends")
    return parser


def _load(path: str) -> config.Config:
    cfg = config.load(path)
    problems = []
    for registry in cfg.registries:
        try:
            if registry.auth not in ("google", "anonymous"):
                credentials_for(registry, registry.host)
        except CredentialsError as exc:
            problems.append(f"{cfg.source}: registries[host={registry.host}]: {exc}")
    if problems:
        raise ConfigError(problems)
    return cfg


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
        budget="in-process",
    )
    async with (
        Engine(cfg) as watcher,
        serve(watcher.metrics.registry, watcher.readiness, cfg.server.port) as port,
    ):
        log.info("serving", port=port, paths=["/metrics", "/healthz", "/readyz"])
        await watcher.run(stop)
    if watcher.fatal is not None:
        log.error("stopped: a task the daemon cannot run without failed", task=watcher.fatal)
        return 1
    log.info("stopped")
    return 0


async def _once(cfg: config.Config, dry_run: bool) -> int:
    async with Engine(cfg) as watcher:
        report = await watcher.cycle(dry_run=dry_run)
    verb = "would update" if dry_run else "updated"
    for update in report.updates:
        outcome = report.outcomes.get(update.block.branch)
        if dry_run or (outcome and update in outcome.applied):
            print(f"{verb} {update.describe()}")
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
        watch = await watcher.discover(log_problems=False)
    for problem in watch.problems:
        print(f"{problem}", file=sys.stderr)
    print(
        f"{len(watch.branches)} branch(es), {len(watch.images)} image(s), "
        f"{watch.block_count} valid block(s), {len(watch.problems)} problem(s)"
    )
    return 2 if watch.problems else 0


async def _report(cfg: config.Config, command: str, count: int | None) -> int:
    async with Engine(cfg) as watcher:
        watch = await watcher.discover(log_problems=False)
    if command == "shards":
        print(reports.shards_report(cfg, watch, count))
    else:
        print(reports.budget_report(cfg, watch))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "shards" and args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    if args.command == "demo":
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
        return demo(args.workdir, keep=args.keep)
    # The daemon logs to stdout (one JSON object per line, for the cluster's
    # log pipeline); the one-shot commands keep stdout for their report.
    logs.configure(args.log_level, sys.stdout if args.command == "run" else sys.stderr)
    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        if args.command == "run":
            return asyncio.run(_run(cfg))
        if args.command == "once":
            return asyncio.run(_once(cfg, args.dry_run))
        if args.command in ("shards", "budget"):
            return asyncio.run(_report(cfg, args.command, getattr(args, "count", None)))
        return asyncio.run(_check(cfg))
    except GitError as exc:
        print(f"git: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
