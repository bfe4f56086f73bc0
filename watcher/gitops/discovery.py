"""Discovery: environment branches -> image blocks -> the watch set, keyed by image.

Blocking (git); the engine runs it in a thread. Parsed files are cached by blob
id and branches by commit, so a cycle in which no branch moved parses nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from watcher.blocks import BlockId, RawBlock
from watcher.config import Config
from watcher.errors import GitError, InvalidReference, PolicyError
from watcher.gitops import values
from watcher.gitops.mirror import GitMirror
from watcher.gitops.profile import STAGES
from watcher.gitops.values.compose import collector_paused
from watcher.promotion import Origin, link
from watcher.references import ImageName, canonical_name
from watcher.steer.holds import FOLLOWING, Steer
from watcher.strategies import Policy, parse_policy


@dataclass(frozen=True)
class FoundBlock:
    """An image block with its interpretation: which image, which policy, which state
    (following, pinned, held, off: :mod:`watcher.steer.holds`), and for a ``follow``
    block where its value comes from (:mod:`watcher.promotion`)."""

    id: BlockId
    raw: RawBlock
    image: ImageName
    policy: Policy
    steer: Steer = FOLLOWING
    origin: Origin | None = None


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
        self._reading = values.Reading.of(config.git)
        self._mirror = mirror
        self._cache: dict[str, _Parsed] = {}
        self._branches: dict[str, _Branch] = {}
        self._last: WatchSet | None = None
        self._images: dict[str, ImageName] = {}

    def run(self, *, fetch: bool = True) -> WatchSet:
        if fetch:
            with STAGES.time("discovery: fetch"):
                self._mirror.fetch()
        heads = self._mirror.branches(self._config.git.branches)
        last = self._last
        if last is not None and last.branches == heads:
            # Nothing moved: the same blocks (the lists are never changed in place).
            return WatchSet(dict(heads), dict(last.images), list(last.problems))
        changed = {
            branch: commit
            for branch, commit in heads.items()
            if branch not in self._branches or self._branches[branch].commit != commit
        }
        with STAGES.time("discovery: list files", len(changed)):
            listed = {
                branch: sorted(self._mirror.blobs(commit, self._config.git.files).items())
                for branch, commit in changed.items()
            }
        self._parse_new({blob for files in listed.values() for _, blob in files})
        views = {}
        for branch, commit in sorted(heads.items()):
            if branch in listed:
                views[branch] = self._view(branch, commit, listed[branch])
            else:
                views[branch] = self._branches[branch]
        self._branches = views
        # Forget content no branch holds any more.
        held = frozenset().union(*(view.blobs for view in views.values()))
        for blob in self._cache.keys() - held:
            del self._cache[blob]
        grouped: dict[ImageName, list[FoundBlock]] = defaultdict(list)
        watch = WatchSet(branches=dict(heads))
        every = [block for view in views.values() for block in view.blocks]
        for view in views.values():
            watch.problems.extend(view.problems)
        # Followers are linked to their sources across branches: whenever any moved.
        linked, mistakes = link(every, heads)
        for block in linked:
            grouped[block.image].append(block)
        watch.problems.extend(
            Problem(block.id.branch, block.id.file, block.raw.line, message)
            for block, message in mistakes
        )
        watch.images = dict(sorted(grouped.items()))
        self._last = watch
        return WatchSet(dict(heads), dict(watch.images), list(watch.problems))

    def _parse_new(self, blobs: set[str]) -> None:
        """Read and parse the blobs not parsed yet: one round trip for all of them."""
        new = sorted(blobs - self._cache.keys())
        if not new:
            return
        with STAGES.time("discovery: read", len(new)):
            contents = self._mirror.read_objects(new)
        with STAGES.time("discovery: parse", len(new)), collector_paused():
            for blob in new:
                kind, data = contents.get(blob, ("missing", b""))
                if kind != "blob":
                    raise GitError(f"cannot read blob {blob}: {kind}")
                self._cache[blob] = self._parse(data)

    def _view(self, branch: str, commit: str, files: list[tuple[str, str]]) -> _Branch:
        blocks: list[FoundBlock] = []
        problems: list[Problem] = []
        rule = self._config.promotion_for(branch)
        for path, blob in files:
            parsed = self._cache[blob]
            for raw, image, policy in parsed.blocks:
                if rule is not None and not _own_strategy(raw.watch):
                    # A `promotions:` rule: the branch follows `from`, block by block.
                    policy = replace(
                        policy,
                        strategy="follow",
                        source=rule.source,
                        after=rule.after,
                        rule=f"{self._config.source}:{rule.line}",
                    )
                blocks.append(FoundBlock(BlockId(branch, path, raw.path), raw, image, policy))
            problems.extend(
                Problem(branch, path, line, message) for line, message in parsed.problems
            )
        return _Branch(commit, blocks, problems, frozenset(blob for _, blob in files))

    def _parse(self, data: bytes) -> _Parsed:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            return _Parsed([], [(line, "not UTF-8 text; file skipped")])
        raws, file_problems = values.find_blocks(text, reading=self._reading)
        problems = [(p.line, p.message) for p in file_problems]
        blocks = []
        for raw in raws:
            try:
                image = self._image(raw.repository)
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

    def _image(self, repository: str) -> ImageName:
        # Thousands of files name the same few hundred images.
        found = self._images.get(repository)
        if found is None:
            found = self._images[repository] = canonical_name(repository)
        return found


def _own_strategy(watch: object) -> bool:
    """Whether a block's ``watch`` names its strategy: that wins over a promotions rule."""
    return isinstance(watch, Mapping) and "strategy" in watch
