"""Discovery: environment branches -> image blocks -> the watch set, keyed by image.

Blocking (GitPython); the worker runs it in a thread. Parsed files are cached
by (commit, path), so a cycle in which no branch moved parses nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from watcher.blocks import BlockId, RawBlock
from watcher.config import Config
from watcher.errors import InvalidReference, PolicyError
from watcher.gitops import values
from watcher.gitops.mirror import GitMirror
from watcher.references import ImageName, canonical_name
from watcher.steer.holds import FOLLOWING, Steer
from watcher.strategies import Policy, parse_policy


@dataclass(frozen=True)
class FoundBlock:
    """An image block with its interpretation: which image, which policy, which state
    (following, pinned, held, off: :mod:`watcher.steer.holds`)."""

    id: BlockId
    raw: RawBlock
    image: ImageName
    policy: Policy
    steer: Steer = FOLLOWING


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


class Discovery:
    """Finds every image block on every environment branch.

    Parsed files are cached by blob id (their content), so a commit that
    changes one file costs one parse, however many branches share the rest.
    """

    def __init__(self, config: Config, mirror: GitMirror) -> None:
        self._config = config
        self._mirror = mirror
        self._cache: dict[str, _Parsed] = {}

    def run(self, *, fetch: bool = True) -> WatchSet:
        if fetch:
            self._mirror.fetch()
        watch = WatchSet(branches=self._mirror.branches(self._config.git.branches))
        grouped: dict[ImageName, list[FoundBlock]] = defaultdict(list)
        seen: set[str] = set()
        for branch, commit in sorted(watch.branches.items()):
            for path, blob in sorted(self._mirror.blobs(commit, self._config.git.files).items()):
                seen.add(blob)
                parsed = self._cache.get(blob)
                if parsed is None:
                    parsed = self._cache[blob] = self._parse(blob)
                for raw, image, policy in parsed.blocks:
                    block_id = BlockId(branch, path, raw.path)
                    grouped[image].append(FoundBlock(block_id, raw, image, policy))
                watch.problems.extend(
                    Problem(branch, path, line, message) for line, message in parsed.problems
                )
        # Forget content no branch holds any more.
        for blob in self._cache.keys() - seen:
            del self._cache[blob]
        watch.images = dict(sorted(grouped.items()))
        return watch

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
