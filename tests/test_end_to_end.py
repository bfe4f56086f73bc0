"""The whole path with real parts: docker-registry in, environment branches out."""

from __future__ import annotations

import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DockerRegistry, GitRemote, git, make_remote, watcher_config
from watcher.config import Config
from watcher.engine import Engine
from watcher_testing.images import push_image

pytestmark = pytest.mark.integration

ZERO = "sha256:" + "0" * 64

B2C1_API = """\
# api for team b2c1
image:
  repository: {host}/team/api   # the API
  tag: master
  shasum: "{zero}"
resources:
  limits: {{cpu: 1}}
"""

B2C1_WEB = """\
image:
    repository: {host}/team/web
    tag: master
sidecars:
  - name: multi
    image: {{repository: '{host}/team/multi', tag: master}}
"""

B2B1_API = """\
image:
  repository: {host}/team/api
  tag: master
  overrideTag: fixes_TECH-2783
  shasum: {zero}
"""

B2B1_WEB = """\
image:
  repository: {host}/team/web
  tag: master
  shasum: {zero}
"""


def skopeo_digest(registry: DockerRegistry, path: str, tag: str, tmp_path: Path) -> str:
    raw = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--tls-verify=false",
            "--raw",
            f"docker://{registry.host}/{path}:{tag}",
        ],
        check=True,
        capture_output=True,
    ).stdout
    manifest = tmp_path / f"{path.replace('/', '_')}-{tag}.json"
    manifest.write_bytes(raw)
    return subprocess.run(
        ["skopeo", "manifest-digest", str(manifest)], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
async def setup(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, tmp_path: Path
) -> tuple[DockerRegistry, GitRemote, Config]:
    for path, kind in (("team/api", "oci"), ("team/web", "docker"), ("team/multi", "index")):
        await push_image(session, docker_registry.url, path, "master", kind=kind, seed=f"{path}-1")
    fmt = {"host": docker_registry.host, "zero": ZERO}
    remote = make_remote(
        tmp_path,
        {
            "environment/b2c1": {
                "apps/api/values.yaml": B2C1_API.format(**fmt),
                "apps/web/values.yaml": B2C1_WEB.format(**fmt),
            },
            "environment/b2b1": {
                "apps/api/values.yaml": B2B1_API.format(**fmt),
                "apps/web/values.yaml": B2B1_WEB.format(**fmt),
            },
            "main": {"apps/api/values.yaml": B2C1_API.format(**fmt)},  # not an environment
        },
    )
    return docker_registry, remote, watcher_config(docker_registry.host, remote, tmp_path)


async def test_first_cycle_writes_digests_skopeo_agrees(
    setup: tuple[DockerRegistry, GitRemote, Config], tmp_path: Path
) -> None:
    registry, remote, config = setup
    before = {b: remote.count(b) for b in remote.branches()}
    async with Engine(config) as watcher:
        report = await watcher.cycle()
    api = skopeo_digest(registry, "team/api", "master", tmp_path)
    web = skopeo_digest(registry, "team/web", "master", tmp_path)
    multi = skopeo_digest(registry, "team/multi", "master", tmp_path)
    assert len({api, web, multi}) == 3

    # Exactly one commit per branch that had something to change; main untouched.
    assert remote.count("environment/b2c1") == before["environment/b2c1"] + 1
    assert remote.count("environment/b2b1") == before["environment/b2b1"] + 1
    assert remote.count("main") == before["main"]
    assert {o.result for o in report.outcomes.values()} == {"committed"}

    # The exact diff: only the changed scalar moves; comments, quoting, order stay.
    host = registry.host
    assert remote.read("environment/b2c1", "apps/api/values.yaml") == B2C1_API.format(
        host=host, zero=api
    )
    assert remote.read("environment/b2c1", "apps/web/values.yaml") == (
        "image:\n"
        f"    repository: {host}/team/web\n"
        "    tag: master\n"
        f"    shasum: {web}\n"
        "sidecars:\n"
        "  - name: multi\n"
        f"    image: {{repository: '{host}/team/multi', tag: master, shasum: \"{multi}\"}}\n"
    )
    # The pinned block (overrideTag set by a person) is left alone.
    assert remote.read("environment/b2b1", "apps/api/values.yaml") == B2B1_API.format(
        host=host, zero=ZERO
    )
    assert remote.read("environment/b2b1", "apps/web/values.yaml") == B2B1_WEB.format(
        host=host, zero=web
    )
    # The commit names every changed block with old and new values.
    message = git(remote.path, "log", "-1", "--format=%B", "environment/b2c1")
    assert f"shasum {ZERO} -> {api}" in message
    assert f"shasum (none) -> {web}" in message
    assert f"shasum (none) -> {multi}" in message
    author = git(remote.path, "log", "-1", "--format=%an <%ae>", "environment/b2c1")
    assert author == "image-watcher <watcher@example.com>"


async def test_unchanged_registry_makes_no_commit_and_moved_tag_one_per_branch(
    setup: tuple[DockerRegistry, GitRemote, Config], session: aiohttp.ClientSession
) -> None:
    registry, remote, config = setup
    async with Engine(config) as watcher:
        await watcher.cycle()
        heads = {b: remote.head(b) for b in remote.branches()}
        report = await watcher.cycle()
        assert report.updates == []
        assert {b: remote.head(b) for b in remote.branches()} == heads

        # A developer pushes a new build of team/web:master.
        new = await push_image(
            session, registry.url, "team/web", "master", kind="docker", seed="team/web-2"
        )
        report = await watcher.cycle()
    assert {u.block.branch for u in report.updates} == {"environment/b2c1", "environment/b2b1"}
    for branch in ("environment/b2c1", "environment/b2b1"):
        assert remote.count(branch) == len(remote.log(heads[branch])) + 1
        assert f"shasum: {new}" in remote.read(branch, "apps/web/values.yaml")
    assert remote.head("main") == heads["main"]


async def test_dry_run_writes_nothing(setup: tuple[DockerRegistry, GitRemote, Config]) -> None:
    _, remote, config = setup
    heads = {b: remote.head(b) for b in remote.branches()}
    async with Engine(config) as watcher:
        report = await watcher.cycle(dry_run=True)
    assert len(report.updates) == 4
    assert {b: remote.head(b) for b in remote.branches()} == heads


async def test_person_commit_to_same_file_during_write_survives(
    setup: tuple[DockerRegistry, GitRemote, Config],
) -> None:
    registry, remote, config = setup
    async with Engine(config) as watcher:
        watch = await watcher.discover()
        from watcher.engine import CycleReport

        report = CycleReport(watch)
        await watcher.resolve(watch, report)
        # While the watcher holds its decisions, a person edits the same file
        # (another key) and pushes: the watcher's view of the branch is stale.
        edited = B2C1_API.format(host=registry.host, zero=ZERO).replace("cpu: 1", "cpu: 2")
        person = remote.commit(
            "environment/b2c1", {"apps/api/values.yaml": edited}, "more cpu for api"
        )
        outcomes = await watcher.write(report.updates)
    assert outcomes["environment/b2c1"].result == "committed"
    assert outcomes["environment/b2c1"].attempts >= 2
    history = [line.split()[0] for line in remote.log("environment/b2c1")]
    assert person in history  # the person's commit is still there
    text = remote.read("environment/b2c1", "apps/api/values.yaml")
    assert "cpu: 2" in text
    assert ZERO not in text  # and the update landed on top of it


async def test_rejected_push_stays_pending_and_lands_later(
    setup: tuple[DockerRegistry, GitRemote, Config],
) -> None:
    _, remote, config = setup
    hook = remote.path / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'branch protected' >&2\nexit 1\n")
    hook.chmod(0o755)
    heads = {b: remote.head(b) for b in remote.branches()}
    async with Engine(config) as watcher:
        report = await watcher.cycle()
        assert {o.result for o in report.outcomes.values()} == {"error"}
        assert {b: remote.head(b) for b in remote.branches()} == heads
        assert sum(len(p) for p in watcher.pending.values()) == 4
        hook.unlink()
        report = await watcher.cycle()
    assert {o.result for o in report.outcomes.values()} == {"committed"}
    assert ZERO not in remote.read("environment/b2b1", "apps/web/values.yaml")
    assert sum(len(p) for p in watcher.pending.values()) == 0


async def test_bad_input_is_skipped_and_the_rest_goes_on(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await push_image(session, docker_registry.url, "team/api", "master", kind="oci", seed="a")
    host = docker_registry.host
    good = f"image:\n  repository: {host}/team/api\n  tag: master\n"
    remote = make_remote(
        tmp_path,
        {
            "environment/a": {
                "apps/broken/values.yaml": "image: [unclosed\n  repository: x\n",
                "apps/api/values.yaml": good,
                "apps/gone/values.yaml": f"image:\n  repository: {host}/team/gone\n  tag: master\n",
                "apps/notag/values.yaml": f"image:\n  repository: {host}/team/api\n  tag: nope\n",
                "apps/badrepo/values.yaml": "image:\n  repository: Not/Valid\n  tag: master\n",
            },
            "environment/b": {"apps/api/values.yaml": good},
        },
    )
    config = watcher_config(docker_registry.host, remote, tmp_path)
    async with Engine(config) as watcher:
        report = await watcher.cycle()
    problems = {(p.file, p.line) for p in report.watch.problems}
    assert ("apps/broken/values.yaml", 2) in problems or ("apps/broken/values.yaml", 1) in problems
    assert any(p.file == "apps/badrepo/values.yaml" for p in report.watch.problems)
    # A 404 (an image or a tag that is not there) skips just those blocks.
    skipped = {block.file: reason for block, reason in report.skipped}
    assert "not found" in skipped["apps/gone/values.yaml"]
    assert "not found" in skipped["apps/notag/values.yaml"]
    assert report.failed_images == {}
    for branch in ("environment/a", "environment/b"):
        assert "shasum: sha256:" in remote.read(branch, "apps/api/values.yaml")
    assert "shasum" not in remote.read("environment/a", "apps/gone/values.yaml")
    assert "shasum" not in remote.read("environment/a", "apps/notag/values.yaml")
