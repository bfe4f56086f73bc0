"""Strategies: a block's ``watch`` policy, and what it decides given registry facts.

Pure: no I/O. The registry layer gathers :class:`ImageFacts` for one image once
per cycle; :func:`decide` turns one block, its :class:`Policy` and those facts
into a :class:`Change`, a :class:`NoChange` or a :class:`Skip` (with the reason
to log).

Who owns which field:

- ``digest`` writes ``shasum``. A non-empty ``overrideTag`` on a digest block
  is a person's pin, and the block is left alone.
- ``newest``, ``semver`` and ``lexical`` write ``overrideTag``: they *own* it
  and overwrite whatever it holds. A person pins such a block with
  ``strategy: off`` (or by turning it into a digest block with an
  ``overrideTag``).
- ``follow`` copies ``shasum`` or ``overrideTag`` from the same block on the
  branch ``watch.from`` (:mod:`watcher.promotion`); it asks no registry, and
  :func:`decide` never sees it.
- ``off`` is never touched.

Rules an SRE can rely on:

- ``tags`` is a regex the whole tag must match (``re.fullmatch``): ``main-.*``
  does not pick ``xmain-1``.
- ``ignore`` globs (``fnmatch`` rules, case-sensitive) remove tags.
- Tags that break the OCI grammar are never candidates, and nothing that breaks
  it is ever written.
- ``semver`` without a constraint follows the highest *release* across every
  major version (as ``*``). Pre-releases (``1.5.0-rc.1``, and also suffixed
  tags such as ``1.25.3-alpine``, which semver reads as pre-releases) are
  candidates only when the constraint itself names a pre-release, e.g.
  ``>=2.0.0-rc.1,<3``. Tags are versions only when they are full
  ``MAJOR.MINOR.PATCH[-PRE]``, with an optional leading ``v``: floating tags
  such as ``1.4`` or ``1`` are aliases, not versions, and are never written.
- ``lexical`` is plain string order (code points), not natural order:
  ``build-10`` sorts before ``build-9``. Use ``semver`` for numbers.
- Ties are broken deterministically: if the block's current ``overrideTag`` is
  among the best (same upload time for ``newest``, same version for
  ``semver``), it stays, so a new alias of the same image costs no commit;
  otherwise the greatest tag name wins.
- Tag strategies decide only on a full listing (``ImageFacts.listed``); with no
  listing they skip rather than pick from a partial view and move an
  environment backwards.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# No type information ships with semantic_version; it stays behind the typed
# wrappers below (Constraint, _version), so Any does not leak out.
import semantic_version  # type: ignore[import-untyped]

from watcher.blocks import Edit, Field, RawBlock
from watcher.config import HOLDS, STRATEGIES, Defaults, Holds, Strategy, parse_duration
from watcher.errors import PolicyError
from watcher.references import is_digest, is_tag

WATCH_KEYS: tuple[str, ...] = ("strategy", "tags", "ignore", "semver", "holds", "from", "after")
TAG_STRATEGIES: frozenset[Strategy] = frozenset({"newest", "semver", "lexical"})

# A constraint block: an optional operator, then the version (possibly partial or
# with wildcards). Spaces after the operator are allowed and dropped, because
# SRE-written YAML such as ">= 2, < 3" is common and the library refuses it.
_BLOCK_RE = re.compile(r"(?P<op><=|>=|==|!=|~=|<|>|=|\^|~)?\s*(?P<version>\S+)")


@dataclass(frozen=True)
class Constraint:
    """A semver constraint such as ``~1.4``, ``^1.2`` or ``>=2,<3`` (comma means AND)."""

    text: str
    spec: Any = field(repr=False)  # semantic_version.SimpleSpec
    prereleases: bool  # True when the constraint names a pre-release

    def allows(self, version: Any) -> bool:
        """Whether a parsed version (from :func:`parse_version`) satisfies the constraint."""
        # semantic_version admits e.g. 1.4.8-rc.1 under ~1.4; the design says
        # pre-releases only when the constraint names one, so filter here.
        if version.prerelease and not self.prereleases:
            return False
        return bool(self.spec.match(version))


ANY_RELEASE = "*"


def parse_constraint(text: str) -> Constraint:
    """Parse a constraint; raise :class:`PolicyError` with a usable message."""
    blocks = [part.strip() for part in text.split(",")]
    normal: list[str] = []
    prereleases = False
    for block in blocks:
        match = _BLOCK_RE.fullmatch(block)
        if match is None:
            raise PolicyError(_constraint_help(text))
        version = match["version"]
        normal.append((match["op"] or "") + version)
        # Build metadata may itself contain '-', which does not make a pre-release.
        if "-" in version.split("+", 1)[0]:
            prereleases = True
    try:
        spec = semantic_version.SimpleSpec(",".join(normal))
    except ValueError:
        raise PolicyError(_constraint_help(text)) from None
    return Constraint(text=text, spec=spec, prereleases=prereleases)


_ANY_RELEASE = parse_constraint(ANY_RELEASE)


def _constraint_help(text: str) -> str:
    return (
        f"watch.semver: not a semver constraint: {text!r} "
        "(use e.g. ~1.4, ^1.2, >=2,<3, 1.4.*; join conditions with commas, '||' is not supported)"
    )


def parse_version(tag: str) -> Any:
    """The semantic version a tag names (``1.4.2``, ``v1.4.2``, ``1.5.0-rc.1``), or None.

    Only full ``MAJOR.MINOR.PATCH`` versions count: ``1.4`` is a floating alias.
    """
    text = tag[1:] if tag.startswith("v") else tag
    try:
        return semantic_version.Version(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Policy:
    """A block's ``watch`` mapping, validated, with defaults filled in."""

    strategy: Strategy
    tags: re.Pattern[str] | None = None
    ignore: tuple[str, ...] = ()
    # Set for every semver policy (``*`` when no constraint was written).
    semver: Constraint | None = None
    holds: Holds = "until-new-build"
    # ``follow``: the branch whose block is copied, and how long a value must have
    # stood there first (seconds).
    source: str | None = None
    after: float = 0.0
    # Set when a ``promotions:`` rule made the block follow: where the rule is written.
    rule: str | None = None

    @property
    def field(self) -> Field | None:
        """The value this policy manages: what it writes, and what a person's change holds."""
        return managed_field(self.strategy)


def managed_field(strategy: Strategy) -> Field | None:
    """``digest`` writes ``shasum``; the tag strategies own ``overrideTag``; ``off`` nothing.

    ``follow`` writes the field its source holds; ``shasum`` is its role until the
    source is known (:mod:`watcher.promotion` says which it is each time)."""
    if strategy in ("digest", "follow"):
        return "shasum"
    if strategy in TAG_STRATEGIES:
        return "overrideTag"
    return None


def parse_policy(watch: object, defaults: Defaults) -> Policy:
    """Validate a block's ``watch`` value (None means all defaults)."""
    if watch is None:
        return Policy(strategy=defaults.strategy, holds=defaults.holds)
    if not isinstance(watch, Mapping):
        raise PolicyError(
            f"watch: must be a mapping such as {{strategy: newest, tags: 'main-.*'}}, not {watch!r}"
        )
    for key in watch:
        if key not in WATCH_KEYS:
            raise PolicyError(f"watch.{key}: unknown key (known: {', '.join(WATCH_KEYS)})")

    strategy = _strategy(watch["strategy"]) if "strategy" in watch else defaults.strategy
    tags = _regex(watch["tags"]) if "tags" in watch else None
    ignore = _ignore(watch["ignore"]) if "ignore" in watch else ()
    constraint = _semver(watch["semver"]) if "semver" in watch else None
    holds = _holds(watch["holds"]) if "holds" in watch else defaults.holds
    source = _source(watch["from"]) if "from" in watch else None
    after = _after(watch["after"]) if "after" in watch else 0.0

    # `off` keeps whatever else is written, so a person can pin a block for a
    # while and turn it back on without retyping its policy. Elsewhere a key
    # that would have no effect is a mistake to report, not to ignore.
    if strategy == "digest" and ("tags" in watch or "ignore" in watch):
        raise PolicyError(
            "watch: tags and ignore choose among tags, but strategy digest follows the block's "
            "`tag` (set strategy: newest, semver or lexical)"
        )
    if constraint is not None and strategy not in ("semver", "off"):
        raise PolicyError(
            f"watch.semver: applies only to strategy semver, and this block's strategy is "
            f"{strategy} (add strategy: semver)"
        )
    if strategy == "follow" and source is None:
        raise PolicyError(
            "watch.from: strategy follow needs the branch to follow, "
            "e.g. {strategy: follow, from: environment/staging}"
        )
    if strategy == "follow" and ("tags" in watch or "ignore" in watch):
        raise PolicyError(
            "watch: tags and ignore choose among tags, but strategy follow copies the value "
            "of the same block on its from branch"
        )
    if strategy not in ("follow", "off") and ("from" in watch or "after" in watch):
        raise PolicyError(
            f"watch.from and watch.after: apply only to strategy follow, and this block's "
            f"strategy is {strategy} (add strategy: follow)"
        )
    if strategy == "semver" and constraint is None:
        constraint = _ANY_RELEASE
    return Policy(
        strategy=strategy,
        tags=tags,
        ignore=ignore,
        semver=constraint,
        holds=holds,
        source=source,
        after=after,
    )


def _source(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(
            f"watch.from: must be a branch name such as environment/staging, not {value!r}"
        )
    return value.strip()


def _after(value: object) -> float:
    if not isinstance(value, str):
        raise PolicyError(f"watch.after: must be a duration such as 30m or 1h, not {value!r}")
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise PolicyError(f"watch.after: {exc}") from None


def _strategy(value: object) -> Strategy:
    # YAML 1.1 readers take an unquoted `off` for false.
    if value is False:
        return "off"
    for strategy in STRATEGIES:
        if value == strategy and isinstance(value, str):
            return strategy
    raise PolicyError(f"watch.strategy: must be one of {', '.join(STRATEGIES)}, not {value!r}")


def _holds(value: object) -> Holds:
    for holds in HOLDS:
        if value == holds and isinstance(value, str):
            return holds
    raise PolicyError(f"watch.holds: must be one of {', '.join(HOLDS)}, not {value!r}")


def _regex(value: object) -> re.Pattern[str]:
    if not isinstance(value, str) or not value:
        raise PolicyError(
            f"watch.tags: must be a non-empty regex that whole tags match, not {value!r}"
        )
    try:
        return re.compile(value)
    except re.error as exc:
        raise PolicyError(f"watch.tags: invalid regex {value!r}: {exc}") from None


def _ignore(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise PolicyError(
            f"watch.ignore: must be a list of globs such as ['*-dirty', 'tmp-*'], not {value!r}"
        )
    for item in value:
        if not isinstance(item, str) or not item:
            raise PolicyError(f"watch.ignore: every glob must be a non-empty string, not {item!r}")
    return tuple(value)


def _semver(value: object) -> Constraint:
    if not isinstance(value, str):
        # An unquoted 1.10 reaches us as the float 1.1: refuse rather than guess.
        raise PolicyError(
            f"watch.semver: must be a quoted string such as '~1.4' or '>=2,<3', not {value!r}"
        )
    return parse_constraint(value.strip())


def candidates(policy: Policy, tags: Iterable[str]) -> list[str]:
    """The tags the policy may choose from, sorted by name, without duplicates."""
    out: set[str] = set()
    for tag in tags:
        if not is_tag(tag):
            continue
        if policy.tags is not None and policy.tags.fullmatch(tag) is None:
            continue
        if any(fnmatch.fnmatchcase(tag, glob) for glob in policy.ignore):
            continue
        if policy.strategy == "semver":
            version = parse_version(tag)
            if version is None or not (policy.semver or _ANY_RELEASE).allows(version):
                continue
        out.add(tag)
    return sorted(out)


# --- decisions ---------------------------------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    """What the registry told us about one image this cycle.

    ``tags``: tag -> digest, for the tags whose digest is known. ``listed``:
    every tag of a tags/list, or None when no listing was made. ``times``:
    digest -> upload/creation time, epoch seconds.
    """

    tags: Mapping[str, str] = field(default_factory=dict)
    listed: frozenset[str] | None = None
    times: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """Write ``new`` into ``field`` (which holds ``old``; None: absent or empty)."""

    field: Field
    old: str | None
    new: str


@dataclass(frozen=True)
class NoChange:
    """The block is as it should be (or must not be touched)."""

    reason: str


@dataclass(frozen=True)
class Skip:
    """No decision could be made this cycle; ``reason`` is logged."""

    reason: str


Decision = Change | NoChange | Skip


def decide(block: RawBlock, policy: Policy, facts: ImageFacts) -> Decision:
    """What to do with one block, given its policy and the image's facts."""
    if policy.strategy == "off":
        return NoChange("strategy off")
    if policy.strategy == "follow":
        return Skip("strategy follow is decided from its source branch, not the registry")
    if policy.strategy == "digest":
        return _decide_digest(block, facts)
    if facts.listed is None:
        return Skip("no tag listing for this image")
    cands = candidates(policy, facts.listed)
    if not cands:
        return Skip(f"no tag matches the {policy.strategy} policy")
    current = block.value("overrideTag")
    if policy.strategy == "newest":
        timed: dict[str, float] = {}
        for tag in cands:
            digest = facts.tags.get(tag)
            time = facts.times.get(digest) if digest is not None else None
            if time is not None:
                timed[tag] = time
        if not timed:
            return Skip(f"none of the {len(cands)} matching tags has a known upload time")
        best_time = max(timed.values())
        choice = _tie_break([tag for tag, time in timed.items() if time == best_time], current)
    elif policy.strategy == "semver":
        versions = {tag: parse_version(tag) for tag in cands}
        best = max(versions.values())
        choice = _tie_break([tag for tag, v in versions.items() if v == best], current)
    else:
        # lexical: plain string order (code points); tags are distinct, so no ties.
        choice = cands[-1]
    return _tag_change(current, choice)


def _tie_break(best: list[str], current: str | None) -> str:
    # Keeping the current tag when it is as good spares a commit (and a sync)
    # for nothing: equal times or equal versions mean the same build.
    if current is not None and current in best:
        return current
    return max(best)


def _decide_digest(block: RawBlock, facts: ImageFacts) -> Decision:
    if block.override_tag:
        return NoChange(f"pinned by overrideTag {block.override_tag!r}")
    if not block.tag:
        return Skip("no tag to follow")
    if not is_tag(block.tag):
        return Skip(f"tag {block.tag!r} breaks the OCI tag grammar")
    digest = facts.tags.get(block.tag)
    if digest is None:
        return Skip(f"tag {block.tag!r} not found")
    if not is_digest(digest):
        return Skip(f"registry digest {digest!r} for tag {block.tag!r} breaks the digest grammar")
    old = block.shasum or None
    if digest == old:
        return NoChange("up to date")
    return Change("shasum", old, digest)


def _tag_change(current: str | None, choice: str) -> Decision:
    if not is_tag(choice):  # candidates() already refuses these; never write one
        return Skip(f"tag {choice!r} breaks the OCI tag grammar")
    if choice == current:
        return NoChange("up to date")
    return Change("overrideTag", current, choice)


def to_edit(block: RawBlock, change: Change) -> Edit:
    """The git writer's update for a change, carrying what it was decided against."""
    return Edit(
        document=block.document,
        path=block.path,
        field=change.field,
        old=change.old,
        new=change.new,
        repository=block.repository,
        tag=block.tag,
    )
