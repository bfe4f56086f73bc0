"""Image strings (``git.strings``) followed end to end: docker-registry in, commits out.

The digest strategy writes ``repo:tag@<digest>``; a tag strategy writes ``repo:<tag>``;
every other byte of the file stays.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DockerRegistry, make_remote
from watcher.config import load_text
from watcher.engine import Engine
from watcher_testing.images import push_image

pytestmark = pytest.mark.integration

ZERO = "sha256:" + "0" * 64
FILE = "apps/api/values.yaml"
VALUES = """\
# strings, as some charts take them
image: {host}/team/api:master   # followed by digest
worker:
  sidecar_image: "{host}/team/sidecar:1.0.0@{zero}"
  replicas: 2
"""


def config(tmp_path: Path, host: str, url: str, strategy: str) -> str:
    return f"""
interval: 1s
registries:
  - {{host: "{host}", api: v2, auth: anonymous, insecure: true}}
git:
  url: {url}
  files: ["apps/*/values.yaml"]
  workdir: {tmp_path / strategy}
  strings: ["**/image", "**/*_image"]
defaults: {{strategy: {strategy}}}
"""


async def test_strings_follow_digests_and_tags(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    host, url = docker_registry.host, docker_registry.url
    api = await push_image(session, url, "team/api", "master", kind="index", seed="api-1")
    sidecar = await push_image(session, url, "team/sidecar", "1.0.0", kind="oci", seed="s-1")
    await push_image(session, url, "team/sidecar", "1.2.0", kind="oci", seed="s-2")
    await push_image(session, url, "team/api", "1.1.0", kind="oci", seed="api-2")
    text = VALUES.format(host=host, zero=ZERO)
    remote = make_remote(tmp_path, {"environment/digest": {FILE: text}})
    cfg = load_text(config(tmp_path, host, remote.url, "digest"), "d.yaml", {})
    async with Engine(cfg) as watcher:
        report = await watcher.cycle()
    assert {o.result for o in report.outcomes.values()} == {"committed"}
    assert remote.read("environment/digest", FILE) == text.replace(
        "api:master ", f"api:master@{api} "
    ).replace(ZERO, sidecar)
    async with Engine(cfg) as watcher:
        assert (await watcher.cycle()).updates == []

    # semver over the same file: the tags move, the digests go.
    remote = make_remote(tmp_path, {"environment/semver": {FILE: text}}, name="semver")
    cfg = load_text(config(tmp_path, host, remote.url, "semver"), "s.yaml", {})
    async with Engine(cfg) as watcher:
        report = await watcher.cycle()
    assert {o.result for o in report.outcomes.values()} == {"committed"}
    assert remote.read("environment/semver", FILE) == text.replace(
        "api:master ", "api:1.1.0 "
    ).replace(f"sidecar:1.0.0@{ZERO}", "sidecar:1.2.0")
