"""Image references: canonical names, and the OCI grammar for tags and digests.

Everything in the watcher is keyed by the canonical image name (``host/path``),
so that eleven environments using one image cost one registry look-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from watcher.errors import InvalidReference

DOCKER_HUB = "docker.io"
# Docker Hub's API lives on another host than the one in image names.
DOCKER_HUB_API = "registry-1.docker.io"

TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
# One path component of a repository name (distribution's reference grammar).
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?))*"
    r"(?::[0-9]+)?|\[[0-9A-Fa-f:.]+\](?::[0-9]+)?"
)


def is_tag(value: object) -> bool:
    return isinstance(value, str) and TAG_RE.fullmatch(value) is not None


def is_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST_RE.fullmatch(value) is not None


@dataclass(frozen=True, order=True)
class ImageName:
    """A canonical image name: registry host plus repository path."""

    host: str
    path: str

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"

    @property
    def api_host(self) -> str:
        """The host that serves the registry API for this name."""
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host


@dataclass(frozen=True)
class Reference:
    """A parsed reference: a canonical name and the tag or digest written with it."""

    name: ImageName
    tag: str | None = None
    digest: str | None = None


def _looks_like_host(component: str) -> bool:
    # distribution's rule: the first component is a host if it has a dot or a
    # port, or is "localhost"; otherwise the name lives on Docker Hub.
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or (component.startswith("["))
    )


def parse_reference(text: str) -> Reference:
    """Parse ``[host[:port]/]path[:tag][@digest]`` into its canonical form.

    Docker Hub short names canonicalise as ``docker pull`` does:
    ``nginx`` is ``docker.io/library/nginx``.
    """
    if not isinstance(text, str) or not text or text != text.strip():
        raise InvalidReference(f"not an image reference: {text!r}")
    rest = text
    digest: str | None = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not is_digest(digest):
            raise InvalidReference(f"bad digest in {text!r}: must be sha256:<64 hex>")
    tag: str | None = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not is_tag(tag):
            raise InvalidReference(f"bad tag in {text!r}: {tag!r}")
    parts = rest.split("/")
    if len(parts) > 1 and _looks_like_host(parts[0]):
        host, path_parts = parts[0], parts[1:]
        if not _HOST_RE.fullmatch(host):
            raise InvalidReference(f"bad registry host in {text!r}: {host!r}")
        host = host.lower()
        if host == "index.docker.io":
            host = DOCKER_HUB
    else:
        host, path_parts = DOCKER_HUB, parts
    if host == DOCKER_HUB and len(path_parts) == 1:
        path_parts = ["library", *path_parts]
    for component in path_parts:
        if not _COMPONENT_RE.fullmatch(component):
            raise InvalidReference(
                f"bad repository path in {text!r}: {component!r} "
                "(lower-case letters, digits and . _ - separators only)"
            )
    path = "/".join(path_parts)
    if len(host) + 1 + len(path) > 255:
        raise InvalidReference(f"image name longer than 255 characters: {text!r}")
    return Reference(ImageName(host, path), tag, digest)


def split_reference(text: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` as written: the name untouched (not canonicalised), the tag
    and the digest; raises InvalidReference as :func:`parse_reference` does."""
    reference = parse_reference(text)
    rest = text.split("@", 1)[0]
    name = rest[: -len(reference.tag) - 1] if reference.tag is not None else rest
    return name, reference.tag, reference.digest


def canonical_name(text: str) -> ImageName:
    """The canonical name of a ``repository`` value (a tag or digest on it is dropped)."""
    return parse_reference(text).name
