"""Helm values files: find image blocks, and edit them in place.

- :mod:`~watcher.gitops.values.scalars`: YAML 1.1 scalars as Helm reads them;
- :mod:`~watcher.gitops.values.compose`: text to nodes (libyaml; ruamel.yaml as
  the reference);
- :mod:`~watcher.gitops.values.read`: which mapping is a block, which key holds
  what, and the blocks of a file;
- :mod:`~watcher.gitops.values.edit`: byte-exact edits, each re-read before it
  is returned.
"""

from watcher.gitops.values.edit import EditResult, Status, apply_edits
from watcher.gitops.values.read import DEFAULT_READING, BlockProblem, Reading, find_blocks
from watcher.gitops.values.scalars import plain_is_safe

__all__ = [
    "DEFAULT_READING",
    "BlockProblem",
    "EditResult",
    "Reading",
    "Status",
    "apply_edits",
    "find_blocks",
    "plain_is_safe",
]
