"""Discovery: environment branches -> image blocks -> the watch set, keyed by image.

Blocking (GitPython); the worker runs it in a thread. Parsed files are cached
by (commit, path), so a cycle in which no branch moved parses nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from watcher import values
from watcher.blocks import BlockId, RawBlock
from watcher.config import Config
from watcher.gitops import GitMirror
from watcher.references import ImageName, ReferenceError, canonical_name
from watcher.strategies import Policy, PolicyError, parse_policy


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


_Parsed = tuple[list[FoundBlock], list[Problem]]


class Discovery:
    """Finds every image block on every environment branch."""

    def __init__(self, config: Config, mirror: GitMirror) -> None:
        self._config = config
        self._mirror = mirror
        self._cache: dict[tuple[str, str, str], _Parsed] = {}

    def run(self, *, fetch: bool = True) -> WatchSet:
        if fetch:
            self._mirror.fetch()
        watch = WatchSet(branches=self._mirror.branches(self._config.git.branches))
        grouped: dict[ImageName, list[FoundBlock]] = defaultdict(list)
        seen: set[tuple[str, str, str]] = set()
        for branch, commit in sorted(watch.branches.items()):
            for path in self._mirror.files(commit, self._config.git.files):
                key = (branch, commit, path)
                seen.add(key)
                parsed = self._cache.get(key)
                if parsed is None:
                    parsed = self._cache[key] = self._parse(branch, path, commit)
                found, problems = parsed
                for block in found:
                    grouped[block.image].append(block)
                watch.problems.extend(problems)
        # Forget files of commits no branch points at any more.
        for key in set(self._cache) - seen:
            del self._cache[key]
        watch.images = dict(sorted(grouped.items()))
        return watch

    def _parse(self, branch: str, path: str, commit: str) -> _Parsed:
        data = self._mirror.read(commit, path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            return [], [Problem(branch, path, line, "not UTF-8 text; file skipped")]
        raws, file_problems = values.find_blocks(text)
        problems = [Problem(branch, path, p.line, p.message) for p in file_problems]
        found = []
        for raw in raws:
            block_id = BlockId(branch, path, raw.path)
            try:
                image = canonical_name(raw.repository)
            except ReferenceError as exc:
                problems.append(Problem(branch, path, raw.line, f"repository: {exc}"))
                continue
            try:
                policy = parse_policy(raw.watch, self._config.defaults)
            except PolicyError as exc:
                problems.append(Problem(branch, path, raw.line, str(exc)))
                continue
            found.append(FoundBlock(block_id, raw, image, policy))
        return found, problems
