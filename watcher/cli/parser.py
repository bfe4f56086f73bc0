"""The command line's grammar: every command, its arguments and its ``--help``."""

from __future__ import annotations

import argparse
from typing import Protocol

from watcher import __version__

DESCRIPTION = """\
Keeps GitOps environment branches pointing at the container images teams push.

It finds every image block (a mapping with `repository` and `tag`) in the
values files of every environment branch, looks each image up once per
interval within the registry's request budget, and commits `shasum` or
`overrideTag` updates back, one commit per branch, never force-pushing.

People steer it with commits of their own: `pin`, `release` and `rollback`
each commit to the environment branch as the person who runs them; a revert
of the watcher's commit or a hand edit of a value it manages holds the block
too. `status` and `history` show where every block stands and why.
"""

EPILOG = """\
exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage
environment: WATCHER_GIT_URL and WATCHER_REDIS_URL override git.url and redis.url
"""

BLOCK_HELP = (
    "the block: a values file (apps/api/values.yaml), file#key.path for a file with "
    "several blocks (apps/api/values.yaml#worker.image), or an image name or its last "
    "path segments (team/api, api) when one block on the branch follows it"
)
AUTHOR_HELP = (
    "who makes the change, as 'Name <email>' (default: git config user.name and "
    "user.email, as git resolves them in the current directory)"
)

_PEOPLE = """\
The commit is authored by the person (--author, else git's user.name and
user.email), pushed without force: if the branch moved meanwhile, the change is
made again on the new head, and a block someone else changed meanwhile stops the
command (exit 1) instead of being overwritten. Nothing else in the file changes.
"""

PIN = f"""\
Pin a block to TAG: write overrideTag: TAG on BRANCH. The block stays pinned,
whatever its strategy, until `watcher release`.

{_PEOPLE}
example:
  watcher pin --config shards.yaml environment/b2c1 apps/api/values.yaml v1.4.2
"""

RELEASE = f"""\
Release a block's pin or hold so that the watcher follows it again: a digest
block's overrideTag is emptied; a hold (or a tag strategy's pin) ends with a
commit that records the release. The watcher writes the current build at its
next check.

{_PEOPLE}
example:
  watcher release --config shards.yaml environment/b2c1 api
"""

ROLLBACK = f"""\
Put back the value the block had before the current one (or --to VALUE) and
hold it there: shasum for a digest block, overrideTag for a tag strategy. The
hold lasts as watch.holds (or defaults.holds) says: until-new-build (until the
followed tag points at a build that is neither this value nor the one it
replaced) or until-released.

{_PEOPLE}
example:
  watcher rollback --config shards.yaml environment/b2c1 api
  watcher rollback --config shards.yaml environment/b2c1 api --to sha256:4f1c...
"""

HISTORY = """\
Every value the block had on BRANCH, oldest first: when, by whom, which commit,
and what made it (the watcher's update, a pin, a release, a rollback, or an edit:
a commit without the watcher's trailers, such as a revert). Read from git alone.

example:
  watcher history --config shards.yaml environment/b2c1 apps/api/values.yaml
"""

STATUS = """\
Every block of every environment: image, strategy, value, state (following,
pinned, held, off, failing) with the reason, and its last change with its author.
Read from git: following, pinned, held and off are exact; failing is what git
shows (a file or block that cannot be read). With --daemon URL, the failures a
running daemon met (a tag not found, an image that cannot be looked up) are read
from its /status.json. Never a registry request.

example:
  watcher status --config shards.yaml --branch 'environment/b2c*'
"""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="watcher",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=description or help,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
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

    _daemon_commands(command)
    _demo(sub)
    _people_commands(command)
    return top


def _daemon_commands(command: _Command) -> None:
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


def _demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="Run a local demo: a real registry, a git remote with environment branches.",
        description="Start Debian's docker-registry and a local bare git remote with "
        "environment branches, run the daemon against them, push a new image build and "
        "show the commits landing. Needs docker-registry and git installed.",
    )
    demo.add_argument("--workdir", help="where to keep the demo's files (default: a temp dir)")
    demo.add_argument("--keep", action="store_true", help="keep the files when it ends")


def _people_commands(command: _Command) -> None:
    pin = command("pin", "Pin a block to a tag (overrideTag) until released.", PIN)
    _branch_block(pin)
    pin.add_argument("tag", metavar="TAG", help="the tag to pin the block to")
    pin.add_argument("--author", metavar="'NAME <EMAIL>'", help=AUTHOR_HELP)

    release = command("release", "Clear a block's pin or hold: it follows again.", RELEASE)
    _branch_block(release)
    release.add_argument("--author", metavar="'NAME <EMAIL>'", help=AUTHOR_HELP)

    rollback = command(
        "rollback", "Put back a block's previous value (or --to VALUE), held.", ROLLBACK
    )
    _branch_block(rollback)
    rollback.add_argument(
        "--to", metavar="VALUE", help="the value to put back (a digest, or a tag)"
    )
    rollback.add_argument("--author", metavar="'NAME <EMAIL>'", help=AUTHOR_HELP)

    history = command("history", "Every value a block had: when, by whom, from git.", HISTORY)
    _branch_block(history)
    history.add_argument("--json", action="store_true", help="one JSON document")

    status = command("status", "Every block's state, value and last change.", STATUS)
    status.add_argument(
        "--branch", metavar="GLOB", help="only the environments matching GLOB (environment/b2*)"
    )
    status.add_argument("--json", action="store_true", help="the /status.json document")
    status.add_argument(
        "--daemon",
        metavar="URL",
        help="a running daemon's server (http://localhost:8080) to read failures from",
    )


def _branch_block(p: argparse.ArgumentParser) -> None:
    p.add_argument("branch", metavar="BRANCH", help="the environment branch")
    p.add_argument("block", metavar="BLOCK", help=BLOCK_HELP)


class _Command(Protocol):
    def __call__(
        self, name: str, help: str, description: str | None = None
    ) -> argparse.ArgumentParser: ...
