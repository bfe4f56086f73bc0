"""``watcher``: the command line.

- :mod:`~watcher.cli.parser`: every command's arguments and ``--help``;
- :mod:`~watcher.cli.daemon`: ``run``, ``once``, ``check``, ``shards``, ``budget``,
  ``demo``;
- :mod:`~watcher.cli.people`: the people's commands, ``pin``, ``release``,
  ``rollback`` (each a commit by the person) and the read-only ``history`` and
  ``status``.

Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage. Every failure
is one line (or, for a configuration, one ``file:line`` line per problem), never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from watcher import config, logs
from watcher.cli import daemon, people
from watcher.cli.parser import parser
from watcher.errors import ConfigError, CredentialsError, GitError, UsageError, WatcherError
from watcher.gitops import signing
from watcher.registry.auth import credentials_for

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if args.command == "shards" and args.count is not None and args.count < 1:
        top.error("--count must be at least 1")
    try:
        code = daemon.demo(args.workdir, args.keep) if args.command == "demo" else _command(args)
        # Now, not at exit: a reader that went away must be noticed here.
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`watcher shards | head`): nothing left to say to
        # it, and Python must not try again at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("watcher: the output was closed before the report ended", file=sys.stderr)
        return 1


def _load(path: str) -> config.Config:
    return config.load(path, check_registry=_credentials_problem, check_signing=signing.problem)


def _credentials_problem(registry: config.RegistryConfig) -> str | None:
    """Credentials named in the file that cannot be read now (a variable unset, a
    config.json missing): said at start, with the entry's line, not at the first
    look-up. Google's come from the environment at request time."""
    if registry.auth in ("google", "anonymous"):
        return None
    try:
        credentials_for(registry, registry.host)
    except CredentialsError as exc:
        return str(exc)
    return None


def _command(args: argparse.Namespace) -> int:
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
        if args.command in people.COMMANDS:
            return people.run(args, cfg)
        return daemon.run(args, cfg)
    except UsageError as exc:
        print(f"watcher {args.command}: {exc}", file=sys.stderr)
        return 2
    except GitError as exc:
        print(f"git: {_one_line(exc)}", file=sys.stderr)
        return 1
    except WatcherError as exc:
        # Every product error says what went wrong in its message; exit 1 is
        # "a runtime failure", and the message is its one line.
        print(_one_line(exc), file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
