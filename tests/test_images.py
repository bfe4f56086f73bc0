"""Synthetic images pushed to the real docker-registry, checked with skopeo."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import DockerRegistry
from watcher_testing.images import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    PushError,
    build_image,
    delete_manifest,
    push_image,
    tag_image,
)

pytestmark = pytest.mark.integration


async def skopeo(*args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "skopeo",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {err.decode()}")
    return out


async def skopeo_raw(registry: DockerRegistry, ref: str) -> bytes:
    return await skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/{ref}")


async def skopeo_inspect(registry: DockerRegistry, ref: str, *extra: str) -> dict[str, Any]:
    out = await skopeo(*extra, "inspect", "--tls-verify=false", f"docker://{registry.host}/{ref}")
    document: dict[str, Any] = json.loads(out)
    return document


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize(
    ("kind", "media_type"),
    [("oci", OCI_MANIFEST), ("docker", DOCKER_MANIFEST), ("index", OCI_INDEX)],
)
async def test_push_each_kind_is_what_skopeo_sees(
    docker_registry: DockerRegistry,
    session: aiohttp.ClientSession,
    kind: Any,
    media_type: str,
    tmp_path: Path,
) -> None:
    created = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    digest = await push_image(
        session, docker_registry.url, "team/app", "master", kind=kind, seed="s1", created=created
    )
    raw = await skopeo_raw(docker_registry, "team/app:master")
    assert sha256(raw) == digest
    assert json.loads(raw)["mediaType"] == media_type
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_bytes(raw)
    assert (await skopeo("manifest-digest", str(manifest_file))).decode().strip() == digest

    info = await skopeo_inspect(docker_registry, "team/app:master")
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    assert info["Created"] == "2025-03-04T05:06:07Z"
    assert info["Labels"] == {"org.opencontainers.image.revision": "s1"}
    if kind == "index":
        arm = await skopeo_inspect(docker_registry, "team/app:master", "--override-arch", "arm64")
        assert arm["Architecture"] == "arm64"
        assert arm["Digest"] == digest  # skopeo reports the index digest, as docker pull uses
        assert len(json.loads(raw)["manifests"]) == 2


async def test_same_seed_same_digest_other_seed_other_digest(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession
) -> None:
    url = docker_registry.url
    first = await push_image(session, url, "a/b", "one", kind="index", seed="x")
    again = await push_image(session, url, "a/c", "one", kind="index", seed="x")
    other = await push_image(session, url, "a/b", "two", kind="index", seed="y")
    docker = await push_image(session, url, "a/b", "three", kind="docker", seed="x")
    oci = await push_image(session, url, "a/b", "four", kind="oci", seed="x")
    assert first == again
    assert len({first, other, docker, oci}) == 4
    assert build_image("oci", "x").digest == oci
    later = build_image("oci", "x", datetime(2030, 1, 1, tzinfo=UTC))
    assert later.digest != oci


async def test_tag_image_moves_a_tag(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession
) -> None:
    url = docker_registry.url
    old = await push_image(session, url, "svc", "master", kind="docker", seed="old")
    new = await push_image(session, url, "svc", "build-2", kind="index", seed="new")
    assert sha256(await skopeo_raw(docker_registry, "svc:master")) == old
    assert await tag_image(session, url, "svc", new, "master") == new
    assert sha256(await skopeo_raw(docker_registry, "svc:master")) == new
    tags = json.loads(
        await skopeo("list-tags", "--tls-verify=false", f"docker://{docker_registry.host}/svc")
    )
    assert sorted(tags["Tags"]) == ["build-2", "master"]


async def test_delete_manifest_removes_its_tags(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession
) -> None:
    url = docker_registry.url
    digest = await push_image(session, url, "gone", "v1", kind="oci", seed="z")
    await delete_manifest(session, url, "gone", digest)
    with pytest.raises(AssertionError, match="manifest unknown"):
        await skopeo_raw(docker_registry, "gone:v1")
    with pytest.raises(PushError, match="404"):
        await tag_image(session, url, "gone", digest, "v2")
