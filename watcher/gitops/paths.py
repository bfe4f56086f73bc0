"""Paths: globs for ``git.files``, and where the clone of a remote lives by default.

Pure. fnmatch alone lets ``*`` cross ``/``, which would make ``apps/*/values.yaml``
match files in nested folders nobody meant to watch.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Sequence
from functools import cache, lru_cache


def _segments(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split("/") if part)


# Every branch lists the same paths: each (glob, path) is matched once.
@lru_cache(maxsize=1 << 16)
def match_path(pattern: str, path: str) -> bool:
    """Glob match per ``/`` segment: ``*`` stays within a segment, ``**`` spans any number."""
    pat, parts = _segments(pattern), _segments(path)

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(parts)
        if pat[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and fnmatch.fnmatchcase(parts[j], pat[i]) and match(i + 1, j + 1)

    return match(0, 0)


def matches_any(globs: Sequence[str], path: str) -> bool:
    return any(match_path(glob, path) for glob in globs)


# The userinfo of a URL with a scheme (``https://user:token@host/...``): credentials.
# An scp-like ``git@host:path`` names an ssh user, not a secret, and stays.
_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@]*@", re.I)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Long enough to read the remote's name in `ls`, short enough for any file system.
_SLUG_CHARS = 48


def without_credentials(url: str) -> str:
    """``url`` with any user and password removed: the remote's identity, not its login."""
    return _USERINFO.sub(r"\g<scheme>", url.strip())


def clone_name(url: str) -> str:
    """The default clone directory's name for a remote: a readable slug and a short hash.

    Both come from the URL without credentials, so a rotated token keeps its clone and
    no secret ever appears in a path. The hash tells apart remotes whose slugs agree
    (``a/b-c`` and ``a-b/c``) or were shortened.
    """
    bare = without_credentials(url)
    digest = hashlib.sha256(bare.encode()).hexdigest()[:12]
    path = re.sub(r"^[a-z][a-z0-9+.-]*://", "", bare, flags=re.I)
    path = re.sub(r"^[^/@:]+@", "", path).removesuffix("/").removesuffix(".git")
    slug = _UNSAFE.sub("-", path).strip("-.")
    if len(slug) > _SLUG_CHARS:
        # Keep the end (the repository's own name), cut at a word boundary.
        tail = slug[-_SLUG_CHARS:]
        slug = tail.partition("-")[2] or tail
    return f"{slug}-{digest}" if slug else digest
