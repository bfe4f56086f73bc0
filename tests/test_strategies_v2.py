"""Tag strategies on a plain v2 registry (Debian's docker-registry), end to end.

Requests are counted from the watcher's own Prometheus counter
(``registry_requests_total{kind}``), which every request reports to once.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ruamel.yaml import YAML

from tests.conftest import DockerRegistry, GitRemote, make_remote, watcher_config
from watcher.engine import Engine
from watcher.metrics import Metrics
from watcher_testing.images import ImageKind, push_image

pytestmark = pytest.mark.integration

SENTRY = "fixes_TECH-2783_bump_sentry-"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

VALUES = """\
digest:
  repository: {host}/team/api
  tag: master
newest:
  repository: {host}/team/api
  tag: master
  watch: {{strategy: newest, tags: 'fixes_TECH-2783_bump_sentry-[0-9a-f]{{7}}'}}
semver:
  repository: {host}/team/api
  tag: master
  watch: {{strategy: semver, semver: '>=1.4,<2'}}
lexical:
  repository: {host}/team/api
  tag: master
  watch: {{strategy: lexical, tags: 'build-.*', ignore: ['*-rc']}}
off:
  repository: {host}/team/api
  tag: master
  overrideTag: keep-me
  watch: {{strategy: off}}
"""


def requests_by_kind(metrics: Metrics) -> Counter[str]:
    out: Counter[str] = Counter()
    for family in metrics.registry.collect():
        if family.name == "image_watcher_registry_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["kind"]] += int(sample.value)
    return out


def delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def read_values(remote: GitRemote, branch: str, file: str) -> dict[str, Any]:
    data = YAML(typ="safe").load(remote.read(branch, file))
    assert isinstance(data, dict)
    return data


async def push(
    session: aiohttp.ClientSession,
    registry: DockerRegistry,
    tag: str,
    minutes: int,
    kind: ImageKind = "oci",
    path: str = "team/api",
) -> str:
    return await push_image(
        session,
        registry.url,
        path,
        tag,
        kind=kind,
        seed=f"{path}:{tag}",
        created=T0 + timedelta(minutes=minutes),
    )


async def test_every_strategy_and_newest_reads_each_config_once(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    master = await push(session, docker_registry, "master", 30)
    # Creation times (from each config blob) decide, not push order; one is an index.
    await push(session, docker_registry, SENTRY + "aaaaaaa", 1)
    await push(session, docker_registry, SENTRY + "bbbbbbb", 5, kind="index")
    await push(session, docker_registry, SENTRY + "ccccccc", 3, kind="docker")
    await push(session, docker_registry, SENTRY + "ddddddd-dirty", 9)  # no full match
    for version in ("1.4.2", "1.10.0", "2.0.0", "1.11.0-rc.1"):
        await push(session, docker_registry, version, 2)
    for build in ("build-1", "build-2", "build-3-rc"):
        await push(session, docker_registry, build, 2)
    branch, file = "environment/b2c1", "apps/api/values.yaml"
    remote = make_remote(tmp_path, {branch: {file: VALUES.format(host=docker_registry.host)}})
    async with Engine(watcher_config(docker_registry.host, remote, tmp_path)) as watcher:
        await watcher.cycle()
        first = requests_by_kind(watcher.metrics)
        values = read_values(remote, branch, file)
        assert values["digest"]["shasum"] == master
        assert values["newest"]["overrideTag"] == SENTRY + "bbbbbbb"
        assert values["semver"]["overrideTag"] == "1.10.0"  # numeric, pre-release excluded
        assert values["lexical"]["overrideTag"] == "build-2"  # build-3-rc ignored by glob
        assert values["off"]["overrideTag"] == "keep-me"
        # One listing; a HEAD for the digest block's tag; each of the 3 candidates read
        # once (GET by tag), plus the index's first child; one config blob per build.
        assert dict(first) == {"tags_list": 1, "manifest_head": 1, "manifest_get": 4, "blob": 3}
        assert len(watcher.lookups.times) == 3

        await watcher.cycle()
        second = delta(requests_by_kind(watcher.metrics), first)
        # Known digests: no manifest body, no config blob; a HEAD per candidate says
        # whether its tag moved.
        assert second == {"tags_list": 1, "manifest_head": 4}

        # A developer pushes a newer build: only that one is read in full.
        before = requests_by_kind(watcher.metrics)
        await push(session, docker_registry, SENTRY + "eeeeeee", 7, kind="docker")
        report = await watcher.cycle()
        third = delta(requests_by_kind(watcher.metrics), before)
        assert third == {"tags_list": 1, "manifest_head": 4, "manifest_get": 1, "blob": 1}
        assert [u.strategy for u in report.updates] == ["newest"]
        assert read_values(remote, branch, file)["newest"]["overrideTag"] == SENTRY + "eeeeeee"

        # A tag moved to another (older) build: the HEAD sees it, the blob is read once.
        before = requests_by_kind(watcher.metrics)
        await push(session, docker_registry, SENTRY + "eeeeeee", 0)
        await watcher.cycle()
        fourth = delta(requests_by_kind(watcher.metrics), before)
        assert fourth == {"tags_list": 1, "manifest_head": 5, "manifest_get": 1, "blob": 1}
        assert read_values(remote, branch, file)["newest"]["overrideTag"] == SENTRY + "bbbbbbb"
    assert all(code == "200" for code in _codes(watcher.metrics))


def _codes(metrics: Metrics) -> set[str]:
    codes: set[str] = set()
    for family in metrics.registry.collect():
        if family.name == "image_watcher_registry_requests":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    codes.add(sample.labels["code"])
    return codes


async def test_semver_and_lexical_cost_only_the_listing(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    for tag in ("1.4.2", "1.4.9", "1.5.0", "build-1", "build-2"):
        await push(session, docker_registry, tag, 1)
    host = docker_registry.host
    text = (
        f"a:\n  repository: {host}/team/api\n  tag: x\n"
        "  watch: {strategy: semver, semver: '~1.4'}\n"
        f"b:\n  repository: {host}/team/api\n  tag: x\n  watch: {{strategy: lexical}}\n"
    )
    remote = make_remote(
        tmp_path, {f"environment/e{i}": {"apps/api/values.yaml": text} for i in range(3)}
    )
    async with Engine(watcher_config(docker_registry.host, remote, tmp_path)) as watcher:
        await watcher.cycle()
        first = requests_by_kind(watcher.metrics)
        await watcher.cycle()
        second = delta(requests_by_kind(watcher.metrics), first)
    assert dict(first) == {"tags_list": 1}
    assert second == {"tags_list": 1}
    values = read_values(remote, "environment/e1", "apps/api/values.yaml")
    assert values["a"]["overrideTag"] == "1.4.9"
    assert values["b"]["overrideTag"] == "build-2"


async def test_digest_only_one_head_per_distinct_tag(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    tags = ("master", "staging", "prod")
    digests = {tag: await push(session, docker_registry, tag, 1) for tag in tags}
    host = docker_registry.host
    branches = {
        f"environment/e{i}": {
            "apps/api/values.yaml": "".join(
                f"{tag}:\n  repository: {host}/team/api\n  tag: {tag}\n" for tag in tags
            )
            # A pinned block costs nothing.
            + f"pinned:\n  repository: {host}/team/api\n  tag: other\n  overrideTag: v1\n"
        }
        for i in range(4)
    }
    remote = make_remote(tmp_path, branches)
    async with Engine(watcher_config(docker_registry.host, remote, tmp_path)) as watcher:
        await watcher.cycle()
        first = requests_by_kind(watcher.metrics)
        await watcher.cycle()
        second = delta(requests_by_kind(watcher.metrics), first)
    # 4 branches x 3 tags: one HEAD per distinct tag, no listing, no body.
    assert dict(first) == {"manifest_head": 3}
    assert second == {"manifest_head": 3}
    values = read_values(remote, "environment/e3", "apps/api/values.yaml")
    assert {tag: values[tag]["shasum"] for tag in tags} == digests
    assert "shasum" not in values["pinned"]


async def test_missing_repository_fails_that_image_only(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await push(session, docker_registry, "1.0.0", 1)
    host = docker_registry.host
    text = (
        f"gone:\n  repository: {host}/team/gone\n  tag: x\n  watch: {{strategy: semver}}\n"
        f"newest:\n  repository: {host}/team/gone2\n  tag: x\n  watch: {{strategy: newest}}\n"
        f"api:\n  repository: {host}/team/api\n  tag: x\n  watch: {{strategy: semver}}\n"
    )
    remote = make_remote(tmp_path, {"environment/a": {"apps/api/values.yaml": text}})
    async with Engine(watcher_config(docker_registry.host, remote, tmp_path)) as watcher:
        report = await watcher.cycle()
    assert {str(image) for image in report.failed_images} == {
        f"{host}/team/gone",
        f"{host}/team/gone2",
    }
    assert all(r.startswith("not found: ") for r in report.failed_images.values())
    assert read_values(remote, "environment/a", "apps/api/values.yaml")["api"]["overrideTag"] == (
        "1.0.0"
    )
