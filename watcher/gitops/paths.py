"""Path globs for ``git.files``: ``*`` stays within one ``/`` segment, ``**`` spans any number.

Pure. fnmatch alone lets ``*`` cross ``/``, which would make ``apps/*/values.yaml``
match files in nested folders nobody meant to watch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from functools import cache


def _segments(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split("/") if part)


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


