"""Small synthetic images, built in memory and pushed over the registry HTTP API.

Used by the tests, the benchmarks and the demo: no docker daemon, no network
beyond the target registry. Everything is deterministic: the same ``kind``,
``seed`` and ``created`` always give the same bytes, hence the same digests,
and a different ``seed`` gives different ones.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from yarl import URL

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT_ALL = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

ImageKind = Literal["oci", "docker", "index"]
# A fixed default keeps images deterministic when the caller does not care when they were made.
DEFAULT_CREATED = datetime(2024, 1, 1, tzinfo=UTC)
INDEX_PLATFORMS = ("amd64", "arm64")


class PushError(RuntimeError):
    """The registry refused part of a push."""


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    digest: str


@dataclass(frozen=True)
class Image:
    """A built image: its blobs, its manifests (children before an index) and the top digest."""

    blobs: Mapping[str, bytes]
    manifests: tuple[Manifest, ...]
    created: datetime = field(default=DEFAULT_CREATED)

    @property
    def top(self) -> Manifest:
        """The manifest a tag points at: the index for multi-arch images."""
        return self.manifests[-1]

    @property
    def digest(self) -> str:
        return self.top.digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rfc3339(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _layer(seed: str, arch: str) -> tuple[bytes, str]:
    """A gzip'd tar holding one file; returns (compressed bytes, diff_id of the tar)."""
    content = f"seed={seed}\narch={arch}\n".encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        # Fixed owner, mode and time so the tar (and its digest) depends on the seed only.
        info = tarfile.TarInfo("etc/image-seed")
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=9, mtime=0), sha256_digest(tar_bytes)


def _single(
    kind: Literal["oci", "docker"], seed: str, arch: str, created: datetime
) -> tuple[dict[str, bytes], Manifest]:
    layer, diff_id = _layer(seed, arch)
    config = _canonical(
        {
            "created": rfc3339(created),
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": {"org.opencontainers.image.revision": seed},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": rfc3339(created), "created_by": f"image-tag-watcher {seed}"}],
        }
    )
    media, config_type, layer_type = (
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
        if kind == "oci"
        else (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    )
    config_digest, layer_digest = sha256_digest(config), sha256_digest(layer)
    body = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": media,
            "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": len(layer)}],
        }
    )
    return {config_digest: config, layer_digest: layer}, Manifest(body, media, sha256_digest(body))


def build_image(kind: ImageKind, seed: str, created: datetime | None = None) -> Image:
    """Build an image in memory: ``oci`` or ``docker`` single-arch, or an OCI ``index``.

    ``index`` holds linux/amd64 and linux/arm64 OCI manifests.
    """
    created = created or DEFAULT_CREATED
    if kind in ("oci", "docker"):
        blobs, manifest = _single(kind, seed, "amd64", created)
        return Image(blobs, (manifest,), created)
    if kind != "index":
        raise ValueError(f"unknown image kind {kind!r} (oci, docker or index)")
    all_blobs: dict[str, bytes] = {}
    children: list[Manifest] = []
    for arch in INDEX_PLATFORMS:
        blobs, child = _single("oci", seed, arch, created)
        all_blobs.update(blobs)
        children.append(child)
    index = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": child.media_type,
                    "digest": child.digest,
                    "size": len(child.body),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for arch, child in zip(INDEX_PLATFORMS, children, strict=True)
            ],
        }
    )
    top = Manifest(index, OCI_INDEX, sha256_digest(index))
    return Image(all_blobs, (*children, top), created)


def _v2(base_url: str, path: str, rest: str) -> URL:
    return URL(base_url.rstrip("/")).with_path(f"/v2/{path}/{rest}")


async def _fail(response: aiohttp.ClientResponse, what: str) -> PushError:
    text = (await response.text(errors="replace"))[:300]
    return PushError(f"{what}: {response.method} {response.url} -> {response.status}: {text}")


async def upload_blob(session: aiohttp.ClientSession, base_url: str, path: str, data: bytes) -> str:
    """Monolithic upload (POST, then PUT with the digest); skipped when the blob is there."""
    digest = sha256_digest(data)
    async with session.head(_v2(base_url, path, f"blobs/{digest}")) as response:
        if response.status == 200:
            return digest
    async with session.post(_v2(base_url, path, "blobs/uploads/")) as response:
        if response.status != 202:
            raise await _fail(response, "start blob upload")
        location = response.headers.get("Location")
        if not location:
            raise PushError(f"start blob upload: {response.url}: no Location")
        target = response.url.join(URL(location))
    async with session.put(
        target.update_query(digest=digest),
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    ) as response:
        if response.status != 201:
            raise await _fail(response, "finish blob upload")
    return digest


async def put_manifest(
    session: aiohttp.ClientSession,
    base_url: str,
    path: str,
    reference: str,
    body: bytes,
    media_type: str,
) -> str:
    """PUT a manifest under a tag or digest; returns its digest, checked against the registry's."""
    digest = sha256_digest(body)
    async with session.put(
        _v2(base_url, path, f"manifests/{reference}"),
        data=body,
        headers={"Content-Type": media_type},
    ) as response:
        if response.status not in (200, 201):
            raise await _fail(response, "put manifest")
        said = response.headers.get("Docker-Content-Digest")
    if said is not None and said != digest:
        raise PushError(f"put manifest: registry says {said}, body hashes to {digest}")
    return digest


async def push_built(
    session: aiohttp.ClientSession, base_url: str, path: str, tag: str, image: Image
) -> str:
    """Push a built image: blobs, child manifests by digest, the top manifest under ``tag``."""
    for data in image.blobs.values():
        await upload_blob(session, base_url, path, data)
    for child in image.manifests[:-1]:
        await put_manifest(session, base_url, path, child.digest, child.body, child.media_type)
    top = image.top
    return await put_manifest(session, base_url, path, tag, top.body, top.media_type)


async def push_image(
    session: aiohttp.ClientSession,
    base_url: str,
    path: str,
    tag: str,
    *,
    kind: ImageKind,
    seed: str,
    created: datetime | None = None,
) -> str:
    """Build and push an image to ``base_url`` (e.g. ``http://127.0.0.1:5000``) as ``path:tag``.

    Returns the digest of the pushed manifest (of the index for ``index``).
    """
    return await push_built(session, base_url, path, tag, build_image(kind, seed, created))


async def tag_image(
    session: aiohttp.ClientSession, base_url: str, path: str, digest: str, tag: str
) -> str:
    """Point ``tag`` at the manifest ``digest`` (as ``docker tag`` + push would)."""
    async with session.get(
        _v2(base_url, path, f"manifests/{digest}"), headers={"Accept": ACCEPT_ALL}
    ) as response:
        if response.status != 200:
            raise await _fail(response, "get manifest")
        body = await response.read()
        media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
    if sha256_digest(body) != digest:
        raise PushError(f"get manifest {digest}: body hashes to {sha256_digest(body)}")
    return await put_manifest(session, base_url, path, tag, body, media_type)


async def delete_manifest(
    session: aiohttp.ClientSession, base_url: str, path: str, digest: str
) -> None:
    """Delete a manifest by digest, and with it every tag on it (needs deletes enabled).

    The distribution registry cannot delete a single tag; retag or delete the manifest.
    """
    async with session.delete(_v2(base_url, path, f"manifests/{digest}")) as response:
        if response.status != 202:
            raise await _fail(response, "delete manifest")
