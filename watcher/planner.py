"""The fewest registry requests that answer every block following one image.

Pure: no I/O. The shard calls it once per image per cycle, with every block
that follows the image (across all branches and files), as :data:`Need` pairs.

Planning is in two steps, because on a plain v2 registry the ``newest``
candidates are only known once the tags are listed:

1. :func:`plan` -> :class:`Plan`: whether to list the tags (every page) and
   which tags to resolve with one ``HEAD manifests/<tag>`` each. Send both at
   once.
2. Only when ``Plan.after_listing`` is set (v2 and some ``newest`` block):
   :func:`plan_after_listing`, given the listed tags and every tag -> digest
   known by now (the fresh cache *plus* the HEADs of step 1, so that no tag is
   resolved twice), -> :class:`FollowUp`: the candidate tags still to resolve
   with a HEAD, and the config blobs (creation time) of digests already known
   whose time is not cached. After those HEADs,
   :meth:`FollowUp.config_blobs_after` names the blobs of the digests they
   revealed. A digest's time never changes, so each blob is read once ever.

The engine then builds :class:`~watcher.strategies.ImageFacts` from what it
got and calls :func:`~watcher.strategies.decide` for every block.

What each registry api costs (docs/architecture.md, "registry/: fewest requests"):

- ``google``: any mix of strategies is answered by one ``tags/list`` (its
  ``manifest`` map gives every tag's digest and upload time), so the plan is
  that listing or nothing; never a HEAD, never a follow-up. Digest-only
  images whose tags are all in the fresh cache cost nothing.
- ``v2``: digest blocks cost one HEAD per distinct followed tag not in the
  fresh cache. Any tag strategy adds the listing; ``semver`` and ``lexical``
  decide on names alone, ``newest`` needs the follow-up.
- ``off`` and ``follow`` blocks (a follower copies another branch's value), and
  digest blocks pinned by ``overrideTag`` (see :func:`need`), cost nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass

from watcher.blocks import RawBlock
from watcher.config import Api
from watcher.references import is_digest, is_tag
from watcher.strategies import TAG_STRATEGIES, Policy, candidates

Need = tuple[Policy, str | None]
"""What one block asks of the registry: its policy, and the tag a digest block
resolves (None when it needs no look-up)."""


def need(block: RawBlock, policy: Policy) -> Need:
    """A block's :data:`Need`, with the same pin and grammar rules as ``decide``.

    A digest block pinned by a non-empty ``overrideTag``, or whose tag breaks
    the OCI grammar, is left alone by ``decide``: looking its tag up would be
    a request for nothing (or, for a bad tag, a malformed URL).
    """
    if policy.strategy != "digest" or block.override_tag or not is_tag(block.tag):
        return (policy, None)
    return (policy, block.tag)


@dataclass(frozen=True)
class Plan:
    """Step one: send the listing (if any) and the HEADs together.

    ``list_tags``: one ``tags/list``, every page. ``head``: tags to resolve,
    one ``HEAD manifests/<tag>`` each (distinct, sorted). ``after_listing``:
    call :func:`plan_after_listing` once the listing is in.
    """

    list_tags: bool = False
    head: tuple[str, ...] = ()
    after_listing: bool = False


@dataclass(frozen=True)
class FollowUp:
    """Step two, v2 ``newest`` only.

    ``head``: candidate tags whose digest is not known yet (distinct, sorted).
    ``config_blobs``: digests already known whose creation time is not cached
    (distinct, sorted); fetch them alongside the HEADs.
    """

    head: tuple[str, ...] = ()
    config_blobs: tuple[str, ...] = ()

    def config_blobs_after(
        self, resolved: Mapping[str, str], known_times: Container[str]
    ) -> tuple[str, ...]:
        """The config blobs still to read once ``head`` is resolved to ``resolved`` digests.

        Tags whose HEAD failed are simply absent from ``resolved``; digests
        that break the grammar are never fetched (``decide`` skips them).
        """
        digests = {
            resolved[tag]
            for tag in self.head
            if tag in resolved and is_digest(resolved[tag]) and resolved[tag] not in known_times
        }
        return tuple(sorted(digests - set(self.config_blobs)))


def _fresh(cached_digests: Mapping[str, str]) -> set[str]:
    # A cached value that is not a digest answers nothing: ask again.
    return {tag for tag, digest in cached_digests.items() if is_digest(digest)}


def plan(api: Api, needs: Iterable[Need], cached_digests: Mapping[str, str]) -> Plan:
    """Step one for one image: the listing and HEADs that answer every need.

    ``cached_digests``: tag -> digest still fresh in the short-lived cache.
    Creation times matter only to step two, so they are not asked for here.
    """
    strategies: set[str] = set()
    digest_tags: set[str] = set()
    for policy, tag in needs:
        # A follow block copies its value from another branch: the registry is not asked.
        if policy.strategy in ("off", "follow"):
            continue
        strategies.add(policy.strategy)
        if policy.strategy == "digest" and tag is not None and is_tag(tag):
            digest_tags.add(tag)
    uncached = digest_tags - _fresh(cached_digests)
    tag_strategies = strategies & TAG_STRATEGIES
    if api == "google":
        # The listing carries every tag's digest too: one request, never HEADs.
        return Plan(list_tags=bool(tag_strategies or uncached))
    return Plan(
        list_tags=bool(tag_strategies),
        head=tuple(sorted(uncached)),
        after_listing="newest" in tag_strategies,
    )


def plan_after_listing(
    api: Api,
    needs: Iterable[Need],
    listed_tags: Collection[str],
    cached_digests: Mapping[str, str],
    known_times: Container[str],
) -> FollowUp:
    """Step two: what v2 ``newest`` needs once the tags are listed.

    ``cached_digests`` must hold every tag -> digest known by now: the fresh
    cache and the answers to step one's HEADs. ``known_times``: digests whose
    creation time is cached (forever).
    """
    if api == "google":
        return FollowUp()
    wanted: set[str] = set()
    for policy, _tag in needs:
        if policy.strategy == "newest":
            wanted.update(candidates(policy, listed_tags))
    if not wanted:
        return FollowUp()
    fresh = _fresh(cached_digests)
    blobs = {
        cached_digests[tag] for tag in wanted & fresh if cached_digests[tag] not in known_times
    }
    return FollowUp(head=tuple(sorted(wanted - fresh)), config_blobs=tuple(sorted(blobs)))


def count(step: Plan | FollowUp, pages: int = 1) -> int:
    """Requests a step sends; the listing counts ``pages`` (the pages expected).

    For a :class:`Plan` this leaves out any follow-up; for a :class:`FollowUp`
    it leaves out the blobs its HEADs may reveal (at most one per new digest,
    once ever).
    """
    if pages < 1:
        raise ValueError(f"pages must be at least 1, not {pages}")
    if isinstance(step, FollowUp):
        return len(step.head) + len(step.config_blobs)
    return (pages if step.list_tags else 0) + len(step.head)
