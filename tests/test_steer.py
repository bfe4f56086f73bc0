"""Holds with real parts: a daemon (``python -m watcher run``), the Google-registry
emulator, a git remote, people reverting, editing and releasing, and Chromium reading
the status page.

- A revert of the watcher's commit holds the block at the reverted value for several
  intervals, and the watcher follows again once a new build is pushed.
- With ``until-released``, a hand edit of ``shasum`` holds the block through a new
  build, without a single registry request for it, until ``watcher release``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.cli_support import daemon as run_daemon
from tests.conftest import GitRemote, free_port, git, make_remote
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator

pytestmark = pytest.mark.integration

INTERVAL = 1.0
BRANCH = "environment/a"
API = "apps/api/values.yaml"
SHASUM = re.compile(r"shasum: (sha256:[0-9a-f]{64})")


@dataclass
class Steered:
    emu: GoogleRegistryEmulator
    remote: GitRemote
    config: Path
    port: int
    dir: Path

    def shasum(self) -> str | None:
        found = SHASUM.search(self.remote.read(BRANCH, API))
        return found[1] if found else None


@asynccontextmanager
async def steered(tmp_path: Path, holds: str) -> AsyncIterator[Steered]:
    """An image followed by digest, a block pinned by hand beside it, ``defaults.holds``."""
    async with GoogleRegistryEmulator(EmulatorSettings(auth_required=False)) as emu:
        emu.push("team/api", "master")
        emu.push("team/web", "master")
        api = f"image:\n  repository: {emu.host}/team/api\n  tag: master\n"
        web = f"image:\n  repository: {emu.host}/team/web\n  tag: master\n  overrideTag: fix-7\n"
        # An image the registry does not have: the daemon shows it failing, with the reason.
        gone = f"image:\n  repository: {emu.host}/team/gone\n  tag: master\n"
        files = {API: api, "apps/web/values.yaml": web, "apps/gone/values.yaml": gone}
        remote = make_remote(tmp_path, {BRANCH: files})
        port = free_port()
        config = tmp_path / "shards.yaml"
        config.write_text(
            f"""
shards: 2
interval: 1s
registries:
  - {{host: "{emu.host}", api: google, auth: anonymous, insecure: true}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
  workdir: {tmp_path / "clone"}
defaults: {{holds: {holds}}}
server: {{port: {port}}}
"""
        )
        yield Steered(emu, remote, config, port, tmp_path)


@asynccontextmanager
async def daemon(world: Steered) -> AsyncIterator[Path]:
    """``watcher run``; yields its JSON log's path; SIGTERM at the end must exit 0."""
    async with run_daemon(world.config, world.dir / "daemon.jsonl") as log:
        yield log


async def until(what: str, check: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def events(log: Path, name: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


async def status(world: Steered) -> dict[str, dict[str, object]]:
    """The daemon's /status.json: block ref -> row, for BRANCH."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{world.port}/status.json") as answer,
    ):
        document = await answer.json()
    (env,) = [e for e in document["environments"] if e["branch"] == BRANCH]
    return {row["block"]: row for row in env["blocks"]}


async def cli_status(world: Steered, *args: str) -> dict[str, dict[str, object]]:
    """``watcher status --json``, run as people run it: block ref -> row, for BRANCH."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "watcher", "status", "--config", str(world.config), "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    (env,) = [e for e in document["environments"] if e["branch"] == BRANCH]
    return {row["block"]: row for row in env["blocks"]}


def revert_head(remote: GitRemote) -> str:
    """A person reverts the newest commit of BRANCH, as `git revert` does it."""
    work = remote.scratch / f"revert-{time.monotonic_ns()}"
    git(remote.scratch, "clone", "-q", "--branch", BRANCH, remote.url, str(work))
    git(work, "revert", "--no-edit", "HEAD")
    git(work, "push", "-q", "origin", f"HEAD:refs/heads/{BRANCH}")
    return git(work, "rev-parse", "HEAD")


async def test_a_revert_holds_for_several_intervals_then_a_new_build_is_followed(
    tmp_path: Path,
) -> None:
    async with steered(tmp_path, "until-new-build") as world, daemon(world) as log:
        d1 = world.emu.push("team/api", "master")
        await until("the watcher to follow the first build", lambda: world.shasum() == d1)
        d2 = world.emu.push("team/api", "master")  # the broken build
        await until("the watcher to write the second build", lambda: world.shasum() == d2)
        revert = revert_head(world.remote)
        assert world.shasum() == d1
        # Several intervals: the watcher must leave the reverted block alone.
        await asyncio.sleep(5 * INTERVAL)
        assert world.remote.head(BRANCH) == revert
        assert world.shasum() == d1
        rows = await status(world)
        held = rows[f"{API}#image"]
        assert held["state"] == "held", held
        assert (held["value"], held["replaced"], held["holds"]) == (d1, d2, "until-new-build")
        assert held["changed"]["commit"] == revert  # type: ignore[index]
        assert held["changed"]["author"] == "Dev Person <dev@example.com>"  # type: ignore[index]
        assert rows["apps/web/values.yaml#image"]["state"] == "pinned"
        assert rows["apps/gone/values.yaml#image"]["state"] == "failing"
        assert "look-up failed" in str(rows["apps/gone/values.yaml#image"]["reason"])
        # `watcher status` asks no registry: from git alone the image it cannot know
        # of is following; with --daemon, the daemon's failures are read.
        alone = await cli_status(world)
        assert alone["apps/gone/values.yaml#image"]["state"] == "following"
        assert alone[f"{API}#image"]["state"] == "held"
        merged = await cli_status(world, "--daemon", f"http://127.0.0.1:{world.port}")
        assert merged["apps/gone/values.yaml#image"]["state"] == "failing"
        assert (
            merged["apps/gone/values.yaml#image"]["reason"]
            == (rows["apps/gone/values.yaml#image"]["reason"])
        )
        # Reported once in the log, not every cycle.
        assert len(events(log, "block held")) == 1, events(log, "block held")
        # A new build: the block follows again.
        d3 = world.emu.push("team/api", "master")
        await until("the watcher to follow the new build", lambda: world.shasum() == d3)
        # The page shows git as the next discovery reads it, within an interval.
        deadline = time.monotonic() + 10
        while (await status(world))[f"{API}#image"]["state"] != "following":
            assert time.monotonic() < deadline, await status(world)
            await asyncio.sleep(0.2)
        await until("the hold's end in the log", lambda: bool(events(log, "hold ended")))
        history = [line.split()[0] for line in world.remote.log(BRANCH)]
        assert revert in history  # the person's commit stays


async def test_until_released_a_hand_edit_holds_without_a_request_until_release(
    tmp_path: Path,
) -> None:
    async with steered(tmp_path, "until-released") as world, daemon(world) as log:
        d1 = world.emu.push("team/api", "master")
        await until("the watcher to follow the first build", lambda: world.shasum() == d1)
        # A hand edit of shasum: a digest the person trusts.
        trusted = world.emu.push("team/api", "known-good")
        text = world.remote.read(BRANCH, API).replace(d1, trusted)
        edit = world.remote.commit(BRANCH, {API: text}, "api: back to the known-good build")
        await until("the hold in the log", lambda: bool(events(log, "block held")))
        world.emu.log.clear()
        d2 = world.emu.push("team/api", "master")
        await asyncio.sleep(5 * INTERVAL)
        assert world.shasum() == trusted and world.remote.head(BRANCH) == edit
        # Held until released, and the only block of its image: not one request for it.
        assert not [r for r in world.emu.log if "team/api" in r.path], world.emu.log
        rows = await status(world)
        assert rows[f"{API}#image"]["state"] == "held"
        assert rows[f"{API}#image"]["holds"] == "until-released"
        await page_shows_held_and_pinned(world.port, tmp_path / "chromium")
        released = await asyncio.to_thread(
            subprocess.run,
            [
                *(sys.executable, "-m", "watcher", "release", "--config", str(world.config)),
                *("--author", "Rel Easer <rel@example.com>", BRANCH, "team/api"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert released.returncode == 0, released.stderr
        assert "Traceback" not in released.stderr
        assert world.remote.read(BRANCH, API).count(trusted) == 1  # a record, no edit
        author = git(world.remote.path, "log", "-1", "--format=%an <%ae>", BRANCH)
        assert author == "Rel Easer <rel@example.com>"
        await until("the watcher to follow again", lambda: world.shasum() == d2)


# --- the page in a real browser ---------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


async def page_shows_held_and_pinned(port: int, profile: Path) -> None:
    """Debian's Chromium, through its own chromedriver, reads ``/``: the held and the
    pinned block are there, as rows a person reads (no script runs on the page)."""
    rows = await asyncio.to_thread(_read_page, f"http://127.0.0.1:{port}/", profile)
    by_block = {row[0]: row for row in rows}
    held = by_block[f"{API}#image"]
    pinned = by_block["apps/web/values.yaml#image"]
    assert held[4] == "held" and "until `watcher release`" in held[6], held
    assert "Dev Person" in held[5]
    assert pinned[4] == "pinned" and "fix-7" in pinned[3], pinned


def _read_page(url: str, profile: Path) -> list[list[str]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1400,900")
    # The system's driver, named: Selenium never looks for (or downloads) another.
    service = Service(executable_path="/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(30)
        driver.get(url)
        assert driver.title == "image-tag-watcher status"
        assert driver.execute_script("return document.scripts.length") == 0
        # Kept beside the test's files: what a person saw, when a run needs looking at.
        driver.save_screenshot(str(profile.parent / "status-page.png"))
        return [
            [cell.text for cell in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "table tr")
            if tr.find_elements(By.TAG_NAME, "td")
        ]
    finally:
        driver.quit()
