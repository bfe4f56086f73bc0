"""The people's commands against a real remote: pin, release, rollback and history, with
a person committing to the same branch while each command pushes; every selector and
usage error (exit 2, the candidates listed); who a commit is by.

Real processes (``python -m watcher``) where the exit and both streams matter, ``main``
in this process where only the outcome does; the Google-registry emulator; a bare git
remote whose pre-receive hook lets a person push first.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from tests.conftest import GitRemote, git, make_remote
from watcher.cli import main
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator

pytestmark = pytest.mark.integration

BRANCH = "environment/a"
API = "apps/api/values.yaml"
WEB = "apps/web/values.yaml"
ADA = "Ada Lovelace <ada@example.com>"


@dataclass
class World:
    emu: GoogleRegistryEmulator
    remote: GitRemote
    config: Path
    dir: Path

    async def run(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Run:
        """``python -m watcher ARGS`` (off the event loop: the emulator serves on it)."""
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "watcher", args[0], "--config", str(self.config), *args[1:]],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        return Run(done.returncode, done.stdout, done.stderr)

    def trailers(self, rev: str = BRANCH) -> list[str]:
        out = git(self.remote.path, "log", "-1", "--format=%(trailers:only,unfold)", rev)
        return out.splitlines()

    def author(self, rev: str = BRANCH) -> str:
        return git(self.remote.path, "log", "-1", "--format=%an <%ae>", rev)

    def concurrently(self, files: dict[str, str], message: str) -> str:
        """Arm the remote: the next push to BRANCH finds this person's commit there first
        (pushed from the pre-receive hook, before the push's ref update). Returns its id."""
        work = self.remote.scratch / f"person-{time.monotonic_ns()}"
        git(self.remote.scratch, "clone", "-q", "--branch", BRANCH, self.remote.url, str(work))
        for name, text in files.items():
            (work / name).write_text(text)
            git(work, "add", name)
        git(work, "commit", "-q", "-m", message)
        hook = self.remote.path / "hooks" / "pre-receive"
        hook.write_text(
            "#!/bin/sh\n"
            f"rm -f '{hook}'\n"
            "unset GIT_DIR GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY "
            "GIT_ALTERNATE_OBJECT_DIRECTORIES\n"
            f"cd '{work}' && git push -q origin HEAD:refs/heads/{BRANCH} >&2\n"
        )
        hook.chmod(0o755)
        return git(work, "rev-parse", "HEAD")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with GoogleRegistryEmulator(EmulatorSettings(auth_required=False)) as emu:
        emu.push("team/api", "master")
        emu.push("team/web", "main-1")
        api = (
            f"# the API\nimage:\n  repository: {emu.host}/team/api\n  tag: master\n"
            f"worker:\n  image:\n    repository: {emu.host}/team/api\n    tag: master\n"
        )
        web = (
            f"image:\n  repository: {emu.host}/team/web\n  tag: main\n"
            "  watch: {strategy: newest, tags: 'main-.*'}\n"
        )
        remote = make_remote(tmp_path, {BRANCH: {API: api, WEB: web}})
        config = tmp_path / "shards.yaml"
        config.write_text(
            f"""
interval: 1s
registries:
  - {{host: "{emu.host}", api: google, auth: anonymous, insecure: true}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
  workdir: {tmp_path / "clone"}
"""
        )
        yield World(emu, remote, config, tmp_path)


def shasum(world: World, key: str = "image") -> str:
    text = world.remote.read(BRANCH, API)
    section = text.split("worker:")[0 if key == "image" else 1]
    return section.split("shasum: ")[1].split()[0]


async def test_rollback_pin_release_and_history_while_a_person_pushes(world: World) -> None:
    d1 = world.emu.push("team/api", "master")
    assert (await world.run("once")).code == 0
    d2 = world.emu.push("team/api", "master")
    assert (await world.run("once")).code == 0
    assert shasum(world) == d2

    # history: every value, when and by whom, from git.
    out = await world.run("history", BRANCH, f"{API}#image", "--json")
    assert out.code == 0, out.stderr
    versions = json.loads(out.stdout)["versions"]
    assert [(v["action"], v["shasum"]) for v in versions] == [
        ("created", None),
        ("set", d1),
        ("set", d2),
    ]
    assert versions[0]["author"] == "Dev Person <dev@example.com>"
    assert {v["author"] for v in versions[1:]} == {"image-watcher <image-watcher@localhost>"}

    # rollback: the value before the current one, held; a person pushes meanwhile.
    person = world.concurrently({"README": "ops notes\n"}, "ops: notes")
    out = await world.run("rollback", BRANCH, f"{API}#image", "--author", ADA)
    assert out.code == 0, out.stderr
    assert shasum(world) == d1
    assert world.author() == ADA
    assert git(world.remote.path, "rev-parse", f"{BRANCH}^") == person  # on top, not over
    assert world.remote.read(BRANCH, "README") == "ops notes\n"
    assert world.trailers() == [f"Image-Watcher-Rollback: {API}#image shasum={d1}"]
    # The daemon's own cycle leaves it held (the tag still points at d2).
    head = world.remote.head(BRANCH)
    out = await world.run("once")
    assert f"held {BRANCH}:{API}:image: shasum {d1}" in out.stdout
    assert world.remote.head(BRANCH) == head and shasum(world) == d1

    # pin a tag-strategy block, with a person's commit racing it again.
    world.emu.push("team/web", "main-2")
    person = world.concurrently({"README": "more notes\n"}, "ops: more notes")
    out = await world.run("pin", BRANCH, WEB, "main-1", "--author", ADA)
    assert out.code == 0, out.stderr
    assert "overrideTag: main-1" in world.remote.read(BRANCH, WEB)
    assert git(world.remote.path, "rev-parse", f"{BRANCH}^") == person
    assert world.trailers() == [f"Image-Watcher-Pin: {WEB}#image overrideTag=main-1"]
    await world.run("once")
    assert "overrideTag: main-1" in world.remote.read(BRANCH, WEB)  # pinned: left alone

    # release both: the web pin by the mark alone, the hold likewise; both follow again.
    for selector in ("team/web", f"{API}#image"):
        out = await world.run("release", BRANCH, selector, "--author", ADA)
        assert out.code == 0, out.stderr
    assert world.trailers(BRANCH) == [f"Image-Watcher-Release: {API}#image shasum={d1}"]
    assert world.trailers(f"{BRANCH}^") == [
        f"Image-Watcher-Release: {WEB}#image overrideTag=main-1"
    ]
    assert (await world.run("once")).code == 0
    assert shasum(world) == d2
    assert "overrideTag: main-2" in world.remote.read(BRANCH, WEB)

    out = await world.run("history", BRANCH, f"{API}#image")
    assert out.code == 0
    lines = out.stdout.splitlines()
    assert any("rollback" in line and "Ada Lovelace" in line for line in lines), out.stdout
    assert any("release" in line and "Ada Lovelace" in line for line in lines), out.stdout


async def test_a_person_changing_the_same_block_meanwhile_stops_the_command(
    world: World,
) -> None:
    text = world.remote.read(BRANCH, WEB)
    person = world.concurrently(
        {WEB: text.replace("  tag: main\n", "  tag: main\n  overrideTag: main-9\n")}, "pin by hand"
    )
    out = await world.run("pin", BRANCH, WEB, "main-1", "--author", ADA)
    assert out.code == 1, out
    assert "changed meanwhile" in out.stderr and "nothing was committed" in out.stderr
    assert world.remote.head(BRANCH) == person
    assert "overrideTag: main-9" in world.remote.read(BRANCH, WEB)


def test_digest_pin_and_release_edit_only_the_pin(tmp_path: Path) -> None:
    """A digest block's pin is its overrideTag: pinned and cleared byte-exactly."""
    text = "image:  # keep\n  repository: eu.gcr.io/p/api\n  tag: master\n  shasum: 'sha256:%s'\n"
    text %= "1" * 64
    remote = make_remote(tmp_path, {BRANCH: {API: text}})
    config = tmp_path / "shards.yaml"
    config.write_text(
        f"git: {{url: {remote.url}, files: ['apps/*/values.yaml'], "
        f"workdir: {tmp_path / 'clone'}}}\n"
    )
    args = ["--config", str(config), "--author", ADA, BRANCH, "api"]
    assert _main(["pin", *args, "hotfix-3"]) == 0
    pinned = text.replace("  tag: master\n", "  tag: master\n  overrideTag: hotfix-3\n")
    assert remote.read(BRANCH, API) == pinned
    assert _main(["release", *args]) == 0
    assert remote.read(BRANCH, API) == text.replace(
        "  tag: master\n", '  tag: master\n  overrideTag: ""\n'
    )
    assert _main(["release", *args]) == 0  # nothing left to release: said, no commit
    assert remote.count(BRANCH) == 4


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    finally:
        structlog.reset_defaults()


async def test_selector_and_usage_errors_exit_2_listing_the_candidates(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", str(world.config)]
    cases = [
        # (arguments, what the message must say)
        (["pin", BRANCH, "api", "v1"], ["matches 2 blocks", f"{API}#image", f"{API}#worker.image"]),
        (["pin", BRANCH, API, "v1"], ["matches 2 blocks"]),
        (
            ["history", BRANCH, "billing"],
            ["no block on environment/a matches 'billing'", f"{WEB}#image"],
        ),
        (["release", BRANCH, f"{API}#nope"], [f"the blocks in {API}", f"{API}#worker.image"]),
        (["rollback", "environment/zz", "api"], ["not an environment branch", BRANCH]),
        (["history", "main", "api"], ["main is not an environment branch"]),
        (["pin", BRANCH, "team/web", "bad tag!"], ["is not a valid tag"]),
        (["rollback", BRANCH, f"{API}#image", "--to", "sha256:xyz"], ["takes a digest"]),
        (["rollback", BRANCH, f"{API}#image"], ["no earlier shasum"]),
        (["pin", BRANCH, "web", "v1", "--author", "nobody"], ["write it as 'Name <email>'"]),
        (["status", "--branch", "staging/*"], ["no environment branch matches"]),
    ]
    failures = []
    for args, words in cases:
        if args[0] in ("pin", "release", "rollback") and "--author" not in args:
            args = [*args, "--author", ADA]
        code = _main([args[0], *config, *args[1:]])
        err = capsys.readouterr().err
        if code != 2 or not all(word in err for word in words) or "Traceback" in err:
            failures.append(f"{args}: exit {code}\n{err}")
    assert not failures, "\n\n".join(failures)
    # The same from a real process: exit 2, one message with its candidates, no traceback.
    out = await world.run("release", BRANCH, "api", "--author", ADA)
    assert out.code == 2
    assert out.stderr.splitlines()[0] == (
        f"watcher release: BLOCK 'api' matches 2 blocks on {BRANCH}; name one of them:"
    )


async def test_who_a_commit_is_by(world: World) -> None:
    # No identity anywhere: the change is refused (exit 2), nothing committed.
    home = world.dir / "home"
    home.mkdir()
    bare = {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "XDG_CONFIG_HOME": str(home)}
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        os.environ.pop(key, None)
    head = world.remote.head(BRANCH)
    out = await world.run("pin", BRANCH, "team/web", "main-1", env=bare, cwd=world.dir)
    assert out.code == 2
    assert "every change must say who made it" in out.stderr
    assert "user.name and user.email" in out.stderr
    assert world.remote.head(BRANCH) == head
    # git's identity as `git config` resolves it where the command runs (a repository's own).
    repo = world.dir / "checkout"
    git(world.dir, "init", "-q", str(repo))
    git(repo, "config", "user.name", "Local Person")
    git(repo, "config", "user.email", "local@example.com")
    out = await world.run("pin", BRANCH, "team/web", "main-1", env=bare, cwd=repo)
    assert out.code == 0, out.stderr
    assert world.author() == "Local Person <local@example.com>"
    assert "by Local Person <local@example.com>" in out.stdout
