"""``python -m benchmarks.promotion [--images N] [--followers F] [--interval S] [--rounds R]``:
what environments that follow another environment cost, measured on the real daemon.

Debian's docker-registry holds N images; a bare git remote holds a staging branch
whose blocks follow ``master`` by digest. Three runs of ``python -m watcher run``,
each with its own remote:

- ``staging only``: the staging branch alone;
- ``followers``: staging and F development branches that follow it through a
  ``promotions:`` rule (their blocks name a tag the registry never had, so a
  request for them would show);
- ``own tags``: staging and F development branches whose blocks follow a tag of
  their own (``develop``) by digest: what each environment costs without promotion.

Requests per cycle are the watcher's requests in the registry's own access log
over a steady stretch, divided by the intervals in it. In the ``followers`` run,
R rounds push a new build of every image; the promotion delay is, per image and
follower, the time from the daemon's ``updated`` line for staging (its push has
landed) to its ``updated`` line for the follower. Prints a table and writes it to
``benchmarks/results/promotion.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.infra import make_remote, median, percentile, spawn_daemon, stop_daemon, wall
from benchmarks.report import RESULTS
from watcher_testing.images import push_image
from watcher_testing.services import DockerRegistry
from watcher_testing.waiting import wait_until

STAGING = "environment/staging"
_REQUEST = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+" \d+ \d+ "[^"]*" "image-tag-watcher"')


def _values(host: str, app: str, tag: str) -> str:
    return f"image:\n  repository: {host}/team/{app}\n  tag: {tag}\n"


def _branches(host: str, apps: list[str], followers: int, kind: str) -> dict[str, Any]:
    out: dict[str, dict[str, str]] = {
        STAGING: {f"apps/{a}/values.yaml": _values(host, a, "master") for a in apps}
    }
    if kind == "staging only":
        return out
    tag = "never-pushed" if kind == "followers" else "develop"
    for n in range(1, followers + 1):
        out[f"environment/dev-{n}"] = {f"apps/{a}/values.yaml": _values(host, a, tag) for a in apps}
    return out


def _config(remote: Path, host: str, interval: float, work: Path, rule: bool) -> str:
    promotions = f'promotions:\n  - from: {STAGING}\n    to: ["environment/dev-*"]\n'
    return f"""
shards: 4
interval: {interval:g}s
limits:
  local: {{requests: 100000, per: 1m, headroom: 0%}}
registries:
  - {{host: "{host}", api: v2, auth: anonymous, insecure: true, limit: local}}
git:
  url: {remote}
  files: ["apps/*/values.yaml"]
  workdir: {work / "clone"}
server: {{port: 0}}
{promotions if rule else ""}
"""


def _requests(registry: DockerRegistry) -> list[str]:
    text = (registry.dir / "registry.log").read_text(errors="replace")
    return [f"{m[1]} {m[2]}" for m in _REQUEST.finditer(text)]


def _shasum(remote: Path, branch: str, app: str) -> str | None:
    shown = subprocess.run(
        ["git", "show", f"{branch}:apps/{app}/values.yaml"],
        cwd=remote,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"shasum: (sha256:[0-9a-f]{64})", shown)
    return found[1] if found else None


async def _push_all(
    registry: DockerRegistry, apps: list[str], tag: str, seed: str
) -> dict[str, str]:
    async with aiohttp.ClientSession() as session:
        return {
            app: await push_image(
                session, registry.url, f"team/{app}", tag, kind="oci", seed=f"{app}-{seed}"
            )
            for app in apps
        }


def _run(
    kind: str, registry: DockerRegistry, apps: list[str], args: argparse.Namespace, root: Path
) -> dict[str, Any]:
    work = root / kind.replace(" ", "-")
    work.mkdir()
    branches = _branches(registry.host, apps, args.followers, kind)
    remote = make_remote(work, branches)
    config = work / "shards.yaml"
    config.write_text(_config(remote, registry.host, args.interval, work, kind == "followers"))
    digests = asyncio.run(_push_all(registry, apps, "master", "r0"))
    if kind == "own tags":
        asyncio.run(_push_all(registry, apps, "develop", "d0"))
    daemon = spawn_daemon(kind, work / "daemon", config)
    result: dict[str, Any] = {"run": kind, "branches": len(branches), "images": len(apps)}
    try:

        def settled(want: Mapping[str, str]) -> bool:
            return all(
                _shasum(remote, branch, app) == want[app]
                for branch in branches
                for app in (apps if branch == STAGING or kind == "followers" else [])
            )

        wait_until(lambda: settled(digests), 120, interval=0.2, what=f"{kind}: first sweep")
        # A steady stretch: every image checked, nothing to write.
        mark, started = len(_requests(registry)), time.monotonic()
        time.sleep(args.interval * args.steady)
        steady = _requests(registry)[mark:]
        cycles = (time.monotonic() - started) / args.interval
        result["requests_per_cycle"] = round(len(steady) / cycles, 2)
        result["requests_per_cycle_per_image"] = round(len(steady) / cycles / len(apps), 3)
        result["follower_requests"] = sum("never-pushed" in r for r in _requests(registry))
        if kind == "followers":
            delays: list[float] = []
            for round_ in range(1, args.rounds + 1):
                digests = asyncio.run(_push_all(registry, apps, "master", f"r{round_}"))
                wait_until(lambda d=digests: settled(d), 120, interval=0.2, what=f"round {round_}")
                delays.extend(_delays(daemon.events(), digests))
            result["delays_s"] = sorted(round(d, 3) for d in delays)
            result["delay_p50_s"] = round(median(delays), 3)
            result["delay_p99_s"] = round(percentile(delays, 99), 3)
            result["delay_max_s"] = round(max(delays), 3)
            result["delay_p50_intervals"] = round(median(delays) / args.interval, 3)
            result["delay_max_intervals"] = round(max(delays) / args.interval, 3)
            result["promotions"] = len(delays)
    finally:
        result["exit_code"] = stop_daemon(daemon)
    return result


def _delays(events: list[dict[str, Any]], digests: Mapping[str, str]) -> list[float]:
    """Per image and follower: its `updated` line's time minus staging's, for this build."""
    wanted = set(digests.values())
    staging: dict[str, float] = {}
    followers: list[tuple[str, float]] = []
    for event in events:
        if event.get("event") != "updated" or event.get("new") not in wanted:
            continue
        when = wall(str(event["time"]))
        if event.get("branch") == STAGING:
            staging[str(event["new"])] = when
        else:
            followers.append((str(event["new"]), when))
    return [when - staging[new] for new, when in followers if new in staging]


def _markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"# Promotion: {args.images} images, {args.followers} followers of staging, "
        f"interval {args.interval:g}s",
        "",
        "| run | branches | registry requests per cycle | per image | requests for followers |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['run']} | {r['branches']} | {r['requests_per_cycle']} | "
            f"{r['requests_per_cycle_per_image']} | {r['follower_requests']} |"
        )
    follow = next(r for r in results if r["run"] == "followers")
    lines += [
        "",
        f"Promotion delay after the source commit ({follow['promotions']} promotions, "
        f"{args.rounds} rounds of a new build of every image):",
        "",
        "| p50 | p99 | max | p50 (intervals) | max (intervals) |",
        "| --- | --- | --- | --- | --- |",
        f"| {follow['delay_p50_s']} s | {follow['delay_p99_s']} s | {follow['delay_max_s']} s | "
        f"{follow['delay_p50_intervals']} | {follow['delay_max_intervals']} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.promotion", description=__doc__)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--followers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steady", type=float, default=5, help="intervals counted")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    apps = [f"app{i}" for i in range(args.images)]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-promotion-") as tmp:
        root = Path(tmp)
        for kind in ("staging only", "followers", "own tags"):
            registry = DockerRegistry(root / f"registry-{kind.replace(' ', '-')}")
            registry.start()
            try:
                results.append(_run(kind, registry, apps, args, root))
            finally:
                registry.stop()
    text = _markdown(results, args)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "promotion.md").write_text(text)
    (args.out / "promotion.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
