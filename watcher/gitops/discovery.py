"""Discovery: environment branches -> image blocks -> the watch set, keyed by image.

Blocking (git); the engine runs it in a thread. Parsed files are cached by blob
id and branches by commit, so a cycle in which no branch moved parses nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from watcher.blocks import BlockId, RawBlock
from watcher.config import Config
from watcher.errors import InvalidReference, PolicyError
from watcher.gitops import values
from watcher.gitops.mirror import GitMirror
from watcher.gitops.profile import STAGES
from watcher.references import ImageName, canonical_name
from watcher.strategies import Policy, parse_policy


@dataclass(frozen=True)
class FoundBlock:
    """An image block with its interpretation: which image, which policy."""

    id: BlockId
    raw: RawBlock
    image: ImageName
    policy: Policy


@dataclass(frozen=True)
class Problem:
    """Something wrong in a values file: reported with file and line, then skipped."""

    branch: str
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.branch}:{self.file}:{self.line}: {self.message}"


@dataclass
class WatchSet:
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit
    images: dict[ImageName, list[FoundBlock]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def block_count(self) -> int:
        return sum(len(blocks) for blocks in self.images.values())


@dataclass(frozen=True)
class _Parsed:
    """What one file's content says, whichever branch or path holds it."""

    blocks: list[tuple[RawBlock, ImageName, Policy]]
    problems: list[tuple[int, str]]


@dataclass(frozen=True)
class _Branch:
    """One branch as read at one commit: its blocks and problems, and the blobs it holds."""

    commit: str
    blocks: list[FoundBlock]
    problems: list[Problem]
    blobs: frozenset[str]


class Discovery:
    """Finds every image block on every environment branch.

    Only what changed is read again: a branch still at the commit of the last run is
    reused whole, and a file is parsed once per content (blob id), however many
    branches and commits hold it. Blobs come through the one persistent
    ``git cat-file`` the mirror keeps.
    """

    def __init__(self, config: Config, mirror: GitMirror) -> None:
        self._config = config
        self._mirror = mirror
        self._cache: dict[str, _Parsed] = {}
        self._branches: dict[str, _Branch] = {}
        self._last: WatchSet | None = None

    def run(self, *, fetch: bool = True) -> WatchSet:
        if fetch:
            with STAGES.time("discovery: fetch"):
                self._mirror.fetch()
        heads = self._mirror.branches(self._config.git.branches)
        last = self._last
        if last is not None and last.branches == heads:
            # Nothing moved: the same blocks (the lists are never changed in place).
            return WatchSet(dict(heads), dict(last.images), list(last.problems))
        views = {}
        for branch, commit in sorted(heads.items()):
            view = self._branches.get(branch)
            if view is None or view.commit != commit:
                view = self._read_branch(branch, commit)
            views[branch] = view
        self._branches = views
        # Forget content no branch holds any more.
        held = frozenset().union(*(view.blobs for view in views.values()))
        for blob in self._cache.keys() - held:
            del self._cache[blob]
        grouped: dict[ImageName, list[FoundBlock]] = defaultdict(list)
        watch = WatchSet(branches=dict(heads))
        for view in views.values():
            for block in view.blocks:
                grouped[block.image].append(block)
            watch.problems.extend(view.problems)
        watch.images = dict(sorted(grouped.items()))
        self._last = watch
        return WatchSet(dict(heads), dict(watch.images), list(watch.problems))

    def _read_branch(self, branch: str, commit: str) -> _Branch:
        with STAGES.time("discovery: list files"):
            files = sorted(self._mirror.blobs(commit, self._config.git.files).items())
        blocks: list[FoundBlock] = []
        problems: list[Problem] = []
        with STAGES.time("discovery: read and parse"):
            for path, blob in files:
                parsed = self._cache.get(blob)
                if parsed is None:
                    parsed = self._cache[blob] = self._parse(blob)
                for raw, image, policy in parsed.blocks:
                    blocks.append(FoundBlock(BlockId(branch, path, raw.path), raw, image, policy))
                problems.extend(
                    Problem(branch, path, line, message) for line, message in parsed.problems
                )
        return _Branch(commit, blocks, problems, frozenset(blob for _, blob in files))

    def _parse(self, blob: str) -> _Parsed:
        data = self._mirror.read_blob(blob)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            return _Parsed([], [(line, "not UTF-8 text; file skipped")])
        raws, file_problems = values.find_blocks(text)
        problems = [(p.line, p.message) for p in file_problems]
        blocks = []
        for raw in raws:
            try:
                image = canonical_name(raw.repository)
            except InvalidReference as exc:
                problems.append((raw.line, f"repository: {exc}"))
                continue
            try:
                policy = parse_policy(raw.watch, self._config.defaults)
            except PolicyError as exc:
                problems.append((raw.line, str(exc)))
                continue
            blocks.append((raw, image, policy))
        return _Parsed(blocks, problems)
