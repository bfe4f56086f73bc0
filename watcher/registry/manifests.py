"""What the registry's documents mean: manifest media types, digests, image configs.

Pure functions over bytes and parsed JSON, no I/O: the client asks for these
media types and checks digests with them; the look-ups read an image's
creation time through them.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any

from watcher.errors import BadResponse
from watcher.references import is_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
# Index types first: a multi-arch tag then resolves to the digest `docker pull` uses.
MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
MANIFEST_ACCEPT = ", ".join(MANIFEST_TYPES)
# Schema 1, which registries may still list but no longer serve to our Accept.
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

_FRACTION = re.compile(r"(\.\d{6})\d+")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_reference(image: str, digest: str, body: bytes) -> tuple[str, str] | None:
    """Where the creation time of ``image@digest`` lives: ``("config" | "child", digest)``.

    An index has no config of its own; its first child's stands for it (all
    are one build). None for an empty index. The manifest is the registry's
    word: a child or config entry of the wrong shape, or without a valid
    digest, is a bad answer (BadResponse), never an AttributeError.
    """
    where = f"{image}@{digest}"
    document: Any = json.loads(body)
    if not isinstance(document, dict):
        raise BadResponse(f"{where}: manifest is not a JSON object")
    if "manifests" in document:
        children = document.get("manifests") or []
        if not isinstance(children, list) or not children:
            return None
        child = children[0].get("digest") if isinstance(children[0], dict) else None
        if not isinstance(child, str) or not is_digest(child) or child == digest:
            raise BadResponse(f"{where}: index child without a valid digest")
        return "child", child
    config = document.get("config")
    config_digest = config.get("digest") if isinstance(config, dict) else None
    if not isinstance(config_digest, str) or not is_digest(config_digest):
        raise BadResponse(f"{where}: manifest without a valid config digest")
    return "config", config_digest


def parse_created(config_blob: bytes) -> float | None:
    """An image config's ``created`` as epoch seconds (None when absent or unreadable)."""
    try:
        created = json.loads(config_blob).get("created")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    if not isinstance(created, str):
        return None
    # Go writes nanoseconds; Python reads at most microseconds.
    text = _FRACTION.sub(r"\1", created.strip()).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
