"""Commits built in the object database: no checkout, no index, one git process per step.

Blocking. For a batch of changed files (on one branch or several), the new
blobs are written by one ``git hash-object --stdin-paths`` and every new tree
by one ``git mktree --batch``; only the trees on the changed paths are new,
the rest are the parent's, read through the persistent ``cat-file``. Object
ids are computed here too and must equal git's: a tree built wrong is an
error, never a commit. Each commit is then made by :func:`commit_tree`, the
one place a commit is created (and where a signature would be added:
``git commit-tree -S``).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from watcher.config import Author
from watcher.errors import GitError
from watcher.gitops import clone

# (object type, content) of an object by its id.
ReadObject = Callable[[str], tuple[str, bytes]]

TREE_MODE = b"40000"
FILE_MODE = b"100644"
GITLINK_MODE = b"160000"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def object_id(kind: str, data: bytes) -> str:
    return hashlib.sha1(b"%s %d\0" % (kind.encode(), len(data)) + data).hexdigest()


@dataclass
class Tree:
    """A tree's entries by name: (mode, binary id)."""

    entries: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)

    def encode(self) -> bytes:
        # git's order: names as bytes, a tree's name compared as if it ended in "/".
        def key(name: bytes) -> bytes:
            return name + b"/" if self.entries[name][0] == TREE_MODE else name

        return b"".join(
            mode + b" " + name + b"\0" + sha
            for name in sorted(self.entries, key=key)
            for mode, sha in (self.entries[name],)
        )


def parse_tree(data: bytes) -> Tree:
    tree = Tree()
    at = 0
    while at < len(data):
        space = data.index(b" ", at)
        nul = data.index(b"\0", space)
        tree.entries[data[space + 1 : nul]] = (data[at:space], data[nul + 1 : nul + 21])
        at = nul + 21
    return tree


class TreeBuilder:
    """New trees with changed files on top of existing ones, written in one go."""

    def __init__(self, read: ReadObject) -> None:
        self._read = read
        self._blobs: dict[str, bytes] = {}  # id -> content
        self._trees: list[tuple[str, bytes]] = []  # (id, encoded), children before parents

    def tree_of(self, commit: str) -> str:
        kind, data = self._read(commit)
        if kind != "commit" or not data.startswith(b"tree "):
            raise GitError(f"{commit} is not a commit")
        return data[5:45].decode()

    def build(self, base: str, changes: Mapping[str, bytes]) -> str:
        """The id of ``base`` with ``changes`` (path -> content) applied; written by write()."""
        nested: dict[str, object] = {}
        for path, content in changes.items():
            parts = [part for part in path.split("/") if part]
            if not parts:
                raise GitError(f"not a file path: {path!r}")
            node = nested
            for part in parts[:-1]:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise GitError(f"{path}: {part} is a file in the change set")
                node = child
            node[parts[-1]] = content
        return self._build(base, nested, "")

    def _build(self, base: str | None, nested: Mapping[str, object], where: str) -> str:
        tree = Tree()
        if base is not None:
            kind, data = self._read(base)
            if kind != "tree":
                raise GitError(f"{where or '/'} is not a directory")
            tree = parse_tree(data)
        for name, change in nested.items():
            key = name.encode()
            current = tree.entries.get(key)
            if isinstance(change, bytes):
                if current is not None and current[0] == TREE_MODE:
                    raise GitError(f"{where}{name} is a directory, not a file")
                blob = object_id("blob", change)
                self._blobs[blob] = change
                mode = current[0] if current is not None else FILE_MODE
                tree.entries[key] = (mode, bytes.fromhex(blob))
            else:
                if current is not None and current[0] != TREE_MODE:
                    raise GitError(f"{where}{name} is a file, not a directory")
                child = current[1].hex() if current is not None else None
                sub = self._build(child, change, f"{where}{name}/")  # type: ignore[arg-type]
                tree.entries[key] = (TREE_MODE, bytes.fromhex(sub))
        encoded = tree.encode()
        tree_id = object_id("tree", encoded)
        self._trees.append((tree_id, encoded))
        return tree_id

    def write(self, workdir: Path, fd: int) -> None:
        """Write every blob and tree built so far: one git process for each kind."""
        if self._blobs:
            with tempfile.TemporaryDirectory(prefix="watcher-blobs-") as tmp:
                paths = []
                for n, content in enumerate(self._blobs.values()):
                    path = Path(tmp) / str(n)
                    path.write_bytes(content)
                    paths.append(str(path))
                out = clone.run(
                    workdir, "hash-object", "-w", "--no-filters", "--stdin-paths",
                    input="\n".join(paths).encode() + b"\n", fds=(fd,),
                )  # fmt: skip
            _same(list(self._blobs), out, "hash-object")
        if self._trees:
            records = [_mktree_input(encoded) for _, encoded in self._trees]
            out = clone.run(
                workdir, "mktree", "-z", "--missing", "--batch", input=b"".join(records), fds=(fd,)
            )
            _same([tree_id for tree_id, _ in self._trees], out, "mktree")
        self._blobs.clear()
        self._trees.clear()


def _mktree_input(encoded: bytes) -> bytes:
    """A tree as ``git mktree -z --batch`` reads it: ls-tree records, an empty one last."""
    records = []
    for name, (mode, sha) in parse_tree(encoded).entries.items():
        kind = b"tree" if mode == TREE_MODE else b"commit" if mode == GITLINK_MODE else b"blob"
        records.append(b"%s %s %s\t%s\0" % (mode, kind, sha.hex().encode(), name))
    return b"".join(records) + b"\0"


def _same(expected: list[str], output: bytes, command: str) -> None:
    got = output.decode().split()
    if got != expected:
        raise GitError(f"git {command} wrote other objects than built ({len(got)} ids)")


def commit_tree(
    workdir: Path, tree: str, parent: str, message: str, author: Author, fd: int
) -> str:
    """The commit of ``tree`` on top of ``parent``: the one place a commit is made."""
    identity = {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": author.name,
        "GIT_COMMITTER_EMAIL": author.email,
    }
    out = clone.run(
        workdir, "commit-tree", tree, "-p", parent, "-F", "-",
        input=message.encode(), env=identity, fds=(fd,),
    )  # fmt: skip
    return out.decode().strip()
