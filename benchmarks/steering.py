"""``python -m benchmarks.steering [--blocks N] [--branches B] [--commits C]``: what
holds and the status page cost at scale, measured in this process.

- folding a branch's history (C commits, every one a watcher commit with one trailer
  per block it set) into marks, as the daemon does once per branch at start;
- deriving every block's state (B branches x N blocks) from those marks, as every
  discovery in which a branch moved does;
- building the status and rendering the page and ``/status.json`` for all of them.

Pure work, no git and no network: the git side is one ``git log`` per branch (see
docs/architecture.md, "steer/"). Prints a table and writes it to
``benchmarks/results/steering.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS
from watcher.blocks import BlockId, RawBlock
from watcher.config import Defaults
from watcher.gitops.discovery import FoundBlock
from watcher.references import canonical_name
from watcher.steer.holds import Logged, Stamp, derive, fold
from watcher.steer.status import build
from watcher.steer.trailers import Mark
from watcher.strategies import parse_policy
from watcher.web import page


def _timed(what: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = what()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.steering", description=__doc__)
    parser.add_argument("--blocks", type=int, default=1000, help="blocks per branch")
    parser.add_argument("--branches", type=int, default=11)
    parser.add_argument("--commits", type=int, default=20_000, help="history per branch")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    policy = parse_policy(None, Defaults())
    refs = [f"apps/app{i}/values.yaml#image" for i in range(args.blocks)]

    def digest(n: int) -> str:
        return f"sha256:{n:064x}"

    # Newest first, as git log prints them; each commit sets one block in turn.
    history = [
        Logged(
            Stamp(f"{n:040x}", "image-watcher <w@example.com>", n),
            (Mark("set", refs[n % args.blocks], "shasum", digest(n)),),
        )
        for n in range(args.commits, 0, -1)
    ]
    fold_seconds, book = _timed(lambda: fold(history))
    blocks = []
    for b in range(args.branches):
        for i, ref in enumerate(refs):
            # Every tenth block was reverted by a person: held.
            last = max(n for n in range(i, args.commits + 1, args.blocks) if n) if i else 0
            value = digest(last - args.blocks if i % 10 == 0 and last > args.blocks else last)
            raw = RawBlock(0, ("image",), 2, f"eu.gcr.io/p/app{i}", "master", value, None)
            blocks.append(
                FoundBlock(
                    BlockId(f"environment/e{b}", ref.split("#")[0], ("image",)),
                    raw,
                    canonical_name(raw.repository),
                    policy,
                )
            )
    derive_seconds, steered = _timed(
        lambda: [
            FoundBlock(x.id, x.raw, x.image, x.policy, derive(x.raw, x.policy, book.get(x.id.ref)))
            for x in blocks
        ]
    )
    branches = {f"environment/e{b}": f"{b:040x}" for b in range(args.branches)}
    build_seconds, status = _timed(lambda: build(branches, steered))
    render_seconds, html = _timed(lambda: page.render(status))
    json_seconds, text = _timed(lambda: json.dumps(status.to_json()))
    counts = status.counts()
    rows = [
        ("fold the history of one branch", f"{args.commits} commits", fold_seconds),
        ("derive every block's state", f"{len(blocks)} blocks", derive_seconds),
        ("build the status", f"{len(blocks)} rows", build_seconds),
        ("render the page", f"{len(html) // 1024} KiB of HTML", render_seconds),
        ("/status.json", f"{len(text) // 1024} KiB", json_seconds),
    ]
    lines = [
        f"# Steering at scale: {args.branches} branches x {args.blocks} blocks "
        f"({counts['held']} held), {args.commits} commits of history",
        "",
        "| step | size | milliseconds |",
        "| --- | --- | --- |",
        *(f"| {step} | {size} | {seconds * 1000:.1f} |" for step, size, seconds in rows),
        "",
        "Reproduce: `python -m benchmarks.steering` (one process, no git or network).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steering.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
