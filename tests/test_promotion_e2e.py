"""Promotion with real parts: Debian's docker-registry, a bare git remote, the daemon
(``python -m watcher run``) and the commands as people run them.

- staging follows ``master`` by digest, two development branches follow staging (one
  by a ``promotions:`` rule, one by its own ``watch``): a push reaches staging, then
  both followers within one interval more, and the registry's own access log shows
  no request for the followers;
- ``after`` keeps a value back until it has stood on staging long enough;
- a pin on a follower stays;
- an ``overrideTag`` on staging (``newest``) is copied as ``overrideTag``;
- ``watcher check`` refuses a cycle and a missing ``from`` with file and line (exit
  2); the daemon skips such a block, counts it, and goes on.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.cli_support import assert_clean, watcher
from tests.cli_support import daemon as run_daemon
from tests.conftest import DockerRegistry, GitRemote, free_port, git, make_remote
from watcher.config import load
from watcher.engine import Engine
from watcher_testing.images import push_image

pytestmark = pytest.mark.integration

INTERVAL = 2.0
STAGING, DEV1, DEV2 = "environment/staging", "environment/dev-1", "environment/dev-2"
API = "apps/api/values.yaml"
SHASUM = re.compile(r"shasum: (sha256:[0-9a-f]{64})")
OVERRIDE = re.compile(r"overrideTag: (\S+)")
# Followers name a tag the registry has never seen: any request for it would show.
FOLLOWER_TAG = "never-pushed"


def values(host: str, *, tag: str = "master", watch: str = "") -> str:
    text = f"image:\n  repository: {host}/team/api\n  tag: {tag}\n"
    return text + (f"  watch: {watch}\n" if watch else "")


def config_text(remote: GitRemote, tmp_path: Path, host: str, port: int, extra: str = "") -> str:
    return f"""
shards: 2
interval: {INTERVAL:g}s
registries:
  - {{host: "{host}", api: v2, auth: anonymous, insecure: true}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
  workdir: {tmp_path / "clone"}
server: {{port: {port}}}
{extra}
"""


@dataclass
class World:
    registry: DockerRegistry
    session: aiohttp.ClientSession
    remote: GitRemote
    config: Path
    port: int
    dir: Path

    def value(self, branch: str, pattern: re.Pattern[str] = SHASUM) -> str | None:
        found = pattern.search(self.remote.read(branch, API))
        return found[1] if found else None

    async def push(self, seed: str, tag: str = "master", **kw: object) -> str:
        return await push_image(
            self.session,
            self.registry.url,
            "team/api",
            tag,
            kind="oci",
            seed=seed,
            **kw,  # type: ignore[arg-type]
        )

    def watcher_requests(self) -> list[str]:
        """The watcher's requests as the registry logged them: ``METHOD path`` each."""
        lines = (self.registry.dir / "registry.log").read_text().splitlines()
        found = []
        for line in lines:
            match = re.search(
                r'"(\w+) (\S+) HTTP/[\d.]+" \d+ \d+ "[^"]*" "image-tag-watcher"', line
            )
            if match:
                found.append(f"{match[1]} {match[2]}")
        return found


@asynccontextmanager
async def world(
    tmp_path: Path,
    registry: DockerRegistry,
    session: aiohttp.ClientSession,
    branches: Mapping[str, Mapping[str, str]],
    extra: str = "",
) -> AsyncIterator[World]:
    remote = make_remote(tmp_path, branches)
    port = free_port()
    config = tmp_path / "shards.yaml"
    config.write_text(config_text(remote, tmp_path, registry.host, port, extra))
    yield World(registry, session, remote, config, port, tmp_path)


def three_branches(host: str) -> dict[str, dict[str, str]]:
    """staging by digest; dev-1 by the promotions rule; dev-2 by its own watch."""
    return {
        STAGING: {API: values(host)},
        DEV1: {API: values(host, tag=FOLLOWER_TAG)},
        DEV2: {API: values(host, tag=FOLLOWER_TAG, watch=f"{{strategy: follow, from: {STAGING}}}")},
    }


RULE = f"promotions:\n  - from: {STAGING}\n    to: [{DEV1}]\n"


async def until(what: str, check: object, within: float = 30.0) -> float:
    """Poll ``check`` until true; the monotonic time it became true."""
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def get(w: World, path: str) -> str:
    async with w.session.get(f"http://127.0.0.1:{w.port}{path}") as answer:
        return await answer.text()


def source_trailers(remote: GitRemote, branch: str) -> list[str]:
    text = git(remote.path, "log", "-1", "--format=%(trailers:key=Image-Watcher-From)", branch)
    return [line for line in text.splitlines() if line.strip()]


async def test_a_push_reaches_staging_then_both_followers_without_a_request_for_them(
    tmp_path: Path, docker_registry: DockerRegistry, session: aiohttp.ClientSession
) -> None:
    host = docker_registry.host
    branches = three_branches(host)
    # A follower whose from names no branch: skipped and counted, the daemon goes on.
    branches["environment/dev-3"] = {
        API: values(host, tag=FOLLOWER_TAG, watch="{strategy: follow, from: environment/nope}")
    }
    async with world(tmp_path, docker_registry, session, branches, RULE) as w:
        d1 = await w.push("one")
        ran_from = time.monotonic()
        async with run_daemon(w.config, w.dir / "daemon.jsonl") as log:
            await until(
                "staging and both followers at the first build",
                lambda: all(w.value(b) == d1 for b in (STAGING, DEV1, DEV2)),
            )
            d2 = await w.push("two")
            at_staging = await until("staging at the second build", lambda: w.value(STAGING) == d2)
            at_dev1 = await until("dev-1 at the second build", lambda: w.value(DEV1) == d2)
            at_dev2 = await until("dev-2 at the second build", lambda: w.value(DEV2) == d2)
            # One interval more per link (the next discovery after staging's commit),
            # with room for the batch delay, the push and a loaded machine.
            assert max(at_dev1, at_dev2) - at_staging <= INTERVAL + 1.5, (
                at_dev1 - at_staging,
                at_dev2 - at_staging,
            )
            # The commit names the source branch and the commit that put the value there.
            staging_commit = w.remote.head(STAGING)
            for branch in (DEV1, DEV2):
                assert source_trailers(w.remote, branch) == [
                    f"Image-Watcher-From: {API}#image {STAGING}@{staging_commit}"
                ]
                assert f"(from {STAGING}@{staging_commit})" in git(
                    w.remote.path, "log", "-1", "--format=%B", branch
                )
            # The metric is counted once the push has returned: read it when it has.
            metrics = ""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _follow_updates(metrics) < 4:
                metrics = await get(w, "/metrics")
                await asyncio.sleep(0.1)
            status = await get(w, "/status.json")
        ran_until = time.monotonic()
        requests = w.watcher_requests()
    # The registry saw the watcher ask for staging's tag only: nothing for the followers.
    assert requests, "the registry logged no request from the watcher"
    assert not [r for r in requests if FOLLOWER_TAG in r], requests
    heads = [r for r in requests if r == "HEAD /v2/team/api/manifests/master"]
    others = [r for r in requests if r not in heads and r != "GET /v2/"]
    assert others == [], others
    # One look-up of the one image per interval at most: three branches, one request.
    intervals = (ran_until - ran_from) / INTERVAL
    assert len(heads) <= intervals + 1, (len(heads), intervals)
    # Visible: the follow strategy's updates, promoted with its source, the mistake failing.
    assert _follow_updates(metrics) == 4.0  # two followers, two builds
    assert 'image_watcher_errors_total{stage="promotion"} 1.0' in metrics
    document = json.loads(status)
    rows = {
        (env["branch"], row["block"]): row
        for env in document["environments"]
        for row in env["blocks"]
    }
    for branch in (DEV1, DEV2):
        row = rows[(branch, f"{API}#image")]
        assert row["state"] == "promoted", row
        assert row["source"] == f"{STAGING}:{API}:image@{staging_commit}", row
    broken = rows[("environment/dev-3", f"{API}#image")]
    assert broken["state"] == "failing"
    assert "no environment branch environment/nope" in broken["reason"]
    assert rows[(STAGING, f"{API}#image")]["state"] == "following"
    skipped = [line for line in log.read_text().splitlines() if '"promotion skipped"' in line]
    assert len(skipped) == 1, skipped


def _follow_updates(metrics: str) -> float:
    found = re.search(r'image_watcher_updates_total\{strategy="follow"\} ([0-9.]+)', metrics)
    return float(found[1]) if found else 0.0


async def test_after_holds_a_value_back_until_it_has_stood_long_enough(
    tmp_path: Path, docker_registry: DockerRegistry, session: aiohttp.ClientSession
) -> None:
    host = docker_registry.host
    after = 4
    watch = f"{{strategy: follow, from: {STAGING}, after: {after}s}}"
    branches = {
        STAGING: {API: values(host)},
        DEV1: {API: values(host, tag=FOLLOWER_TAG, watch=watch)},
    }
    async with world(tmp_path, docker_registry, session, branches) as w:
        d1 = await w.push("one")
        cfg = load(w.config, {})
        async with Engine(cfg) as engine:
            await engine.cycle()
            assert w.value(STAGING) == d1
            set_at = int(git(w.remote.path, "log", "-1", "--format=%ct", STAGING))
            # Staging's value is younger than `after`: the follower waits, cycle after cycle.
            while time.time() < set_at + after - 1:
                report = await engine.cycle()
                assert [u for u in report.updates if u.block.branch == DEV1] == []
                assert w.value(DEV1) is None
                row = next(
                    r
                    for env in engine.board.status().environments
                    if env.branch == DEV1
                    for r in env.rows
                )
                assert row.state == "promoted" and "once it has stood there 4s" in row.reason
                await asyncio.sleep(0.5)
            await asyncio.sleep(max(0.0, set_at + after + 1 - time.time()))
            await engine.cycle()
        assert w.value(DEV1) == d1
        promoted_at = int(git(w.remote.path, "log", "-1", "--format=%ct", DEV1))
        assert promoted_at - set_at >= after


async def test_a_chain_converges_one_discovery_per_link(
    tmp_path: Path, docker_registry: DockerRegistry, session: aiohttp.ClientSession
) -> None:
    host = docker_registry.host
    green = "environment/greenlight"
    branches = {
        green: {API: values(host)},
        STAGING: {API: values(host, tag=FOLLOWER_TAG)},
        DEV1: {API: values(host, tag=FOLLOWER_TAG)},
    }
    rules = (
        f"promotions:\n  - from: {green}\n    to: [{STAGING}]\n"
        f"  - from: {STAGING}\n    to: [{DEV1}]\n"
    )
    async with world(tmp_path, docker_registry, session, branches, rules) as w:
        d1 = await w.push("one")
        cfg = load(w.config, {})
        seen = []
        async with Engine(cfg) as engine:
            for _ in range(3):
                await engine.cycle()
                seen.append(tuple(w.value(b) for b in (green, STAGING, DEV1)))
        # Each cycle's discovery reads what the one before wrote: one link per cycle.
        assert seen == [(d1, None, None), (d1, d1, None), (d1, d1, d1)]
        assert source_trailers(w.remote, DEV1) == [
            f"Image-Watcher-From: {API}#image {STAGING}@{w.remote.head(STAGING)}"
        ]


async def test_a_pin_on_a_follower_stays(
    tmp_path: Path, docker_registry: DockerRegistry, session: aiohttp.ClientSession
) -> None:
    host = docker_registry.host
    async with world(tmp_path, docker_registry, session, three_branches(host), RULE) as w:
        d1 = await w.push("one")
        cfg = load(w.config, {})
        async with Engine(cfg) as engine:
            await engine.cycle()
            await engine.cycle()
            assert w.value(DEV1) == w.value(DEV2) == d1
            pin = await watcher(
                [
                    *("pin", "--config", str(w.config)),
                    *("--author", "Grace Hopper <grace@example.com>", DEV2, API, "hotfix-1"),
                ]
            )
            assert_clean(pin, 0)
            # A hand pin on the rule's follower: a person's overrideTag, no trailer.
            text = w.remote.read(DEV1, API) + "  overrideTag: fix-2\n"
            w.remote.commit(DEV1, {API: text}, "pin by hand")
            d2 = await w.push("two")
            for _ in range(3):
                await engine.cycle()
            assert w.value(STAGING) == d2
            status = engine.board.status()
        for branch, tag in ((DEV2, "hotfix-1"), (DEV1, "fix-2")):
            assert w.value(branch, OVERRIDE) == tag
            assert w.value(branch) == d1  # not moved under the pin
        rows = {env.branch: env.rows[0] for env in status.environments}
        assert rows[DEV2].state == rows[DEV1].state == "pinned"


async def test_an_override_tag_on_staging_is_copied_as_override_tag(
    tmp_path: Path, docker_registry: DockerRegistry, session: aiohttp.ClientSession
) -> None:
    host = docker_registry.host
    newest = "{strategy: newest, tags: 'main-.*'}"
    branches = {
        STAGING: {API: values(host, watch=newest)},
        DEV1: {API: values(host, tag=FOLLOWER_TAG)},
    }
    async with world(tmp_path, docker_registry, session, branches, RULE) as w:
        now = datetime.now(UTC)
        await w.push("one", tag="main-1", created=now - timedelta(hours=1))
        await w.push("two", tag="main-2", created=now)
        cfg = load(w.config, {})
        async with Engine(cfg) as engine:
            await engine.cycle()
            assert w.value(STAGING, OVERRIDE) == "main-2"
            report = await engine.cycle()
        (update,) = [u for u in report.updates if u.block.branch == DEV1]
        assert (update.edit.field, update.edit.new, update.strategy) == (
            "overrideTag",
            "main-2",
            "follow",
        )
        assert w.value(DEV1, OVERRIDE) == "main-2"
        assert w.value(DEV1) is None  # no shasum invented: the same image renders
        # `watcher status` for the follower alone, from git, still finds its source.
        done = await watcher(["status", "--config", str(w.config), "--json", "--branch", DEV1])
        assert_clean(done, 0)
        (env,) = json.loads(done.stdout)["environments"]
        (shown,) = env["blocks"]
        assert (shown["state"], shown["field"], shown["value"]) == (
            "promoted",
            "overrideTag",
            "main-2",
        )
        assert shown["source"] == f"{STAGING}:{API}:image@{w.remote.head(STAGING)}"


async def test_check_refuses_a_cycle_and_a_missing_branch_with_file_and_line(
    tmp_path: Path, docker_registry: DockerRegistry, session: aiohttp.ClientSession
) -> None:
    host = docker_registry.host
    branches = {
        STAGING: {API: values(host, watch=f"{{strategy: follow, from: {DEV1}}}")},
        DEV1: {API: values(host, watch=f"{{strategy: follow, from: {STAGING}}}")},
        DEV2: {API: values(host, watch="{strategy: follow, from: environment/gone}")},
    }
    async with world(tmp_path, docker_registry, session, branches) as w:
        done = await watcher(["check", "--config", str(w.config)])
    # Values-file problems read branch:file:line (discovery's form), not the config's.
    assert done.code == 2 and "Traceback" not in done.stderr, done.describe()
    problems = done.reasons
    assert (
        f"{STAGING}:{API}:2: watch.from: follows a cycle: {STAGING} -> {DEV1} -> {STAGING}"
        in problems
    )
    assert f"{DEV1}:{API}:2: watch.from: follows a cycle: {DEV1} -> {STAGING} -> {DEV1}" in problems
    assert (
        f"{DEV2}:{API}:2: watch.from: no environment branch environment/gone "
        "(it must exist and match git.branches)"
    ) in problems
    assert "3 problem(s)" in done.stdout


async def test_check_refuses_rules_that_follow_each_other(tmp_path: Path) -> None:
    config = tmp_path / "shards.yaml"
    config.write_text(
        f"""git: {{url: {tmp_path / "nowhere.git"}}}
promotions:
  - from: {STAGING}
    to: ["environment/dev-*"]
  - from: {DEV1}
    to: [{STAGING}]
"""
    )
    done = await watcher(["check", "--config", str(config)])
    assert_clean(done, 2)
    assert (
        f"{config}:5: promotions[1].from: {DEV1} and {STAGING} follow each other "
        f"(with {config}:3): a cycle"
    ) in done.stderr
