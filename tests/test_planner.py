"""The planner keeps to the table in docs/architecture.md: the fewest requests for every block."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.blocks import RawBlock
from watcher.config import Defaults
from watcher.planner import FollowUp, Need, Plan, count, need, plan, plan_after_listing
from watcher.strategies import Policy, parse_policy

pytestmark = pytest.mark.unit

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def pol(strategy: str, **watch: Any) -> Policy:
    return parse_policy({"strategy": strategy, **watch}, Defaults())


DIGEST = pol("digest")
OFF = pol("off")
NEWEST = pol("newest", tags="fix-.*")
SEMVER = pol("semver", semver="^1")
LEXICAL = pol("lexical")
POLICIES = {"digest": DIGEST, "off": OFF, "newest": NEWEST, "semver": SEMVER, "lexical": LEXICAL}


def raw(tag: str | None = "master", override: str | None = None) -> RawBlock:
    return RawBlock(0, ("image",), 1, "reg.example/app", tag, None, override)


# --- the table ------------------------------------------------------------------


def test_google_any_mix_is_one_listing() -> None:
    needs: list[Need] = [(DIGEST, "master"), (DIGEST, "staging"), (NEWEST, None), (SEMVER, None)]
    p = plan("google", needs, {})
    assert p == Plan(list_tags=True)
    assert count(p, pages=3) == 3
    assert plan_after_listing("google", needs, ["fix-1"], {}, ()) == FollowUp()


def test_off_only_costs_nothing() -> None:
    for api in ("google", "v2"):
        p = plan(api, [(OFF, "master"), (OFF, None)], {})
        assert p == Plan() and count(p, pages=5) == 0
    assert plan("v2", [], {}) == Plan()


def test_v2_digest_only_is_one_head_per_distinct_tag() -> None:
    needs: list[Need] = [(DIGEST, "master"), (DIGEST, "staging"), (DIGEST, "master")]
    p = plan("v2", needs, {})
    assert p == Plan(head=("master", "staging"))
    assert count(p) == 2


def test_fresh_cache_spares_heads_and_google_listings() -> None:
    needs: list[Need] = [(DIGEST, "master"), (DIGEST, "staging")]
    assert plan("v2", needs, {"master": D1}) == Plan(head=("staging",))
    assert plan("v2", needs, {"master": D1, "staging": D2}) == Plan()
    assert plan("google", needs, {"master": D1, "staging": D2}) == Plan()
    # A cached value that is not a digest answers nothing.
    assert plan("v2", needs, {"master": "junk", "staging": D2}) == Plan(head=("master",))


def test_v2_name_strategies_need_the_listing_and_the_digest_blocks_their_heads() -> None:
    needs: list[Need] = [(SEMVER, None), (LEXICAL, None), (DIGEST, "master"), (DIGEST, "rc")]
    assert plan("v2", needs, {"rc": D1}) == Plan(list_tags=True, head=("master",))
    assert count(plan("v2", needs, {"rc": D1}), pages=2) == 3


def test_v2_newest_follows_up_after_the_listing() -> None:
    needs: list[Need] = [(NEWEST, None), (DIGEST, "fix-a")]
    first = plan("v2", needs, {})
    assert first == Plan(list_tags=True, head=("fix-a",), after_listing=True)
    # Step one resolved fix-a; fix-b is cached with a time known; fix-c cached, time unknown.
    known = {"fix-a": D1, "fix-b": D2, "fix-c": D3}
    listed = ["fix-a", "fix-b", "fix-c", "fix-d", "fix-e", "main", "bad tag"]
    follow = plan_after_listing("v2", needs, listed, known, {D2})
    assert follow == FollowUp(head=("fix-d", "fix-e"), config_blobs=(D1, D3))
    assert count(follow) == 4
    # After the HEADs: only digests not known and not already being fetched.
    resolved = {"fix-d": D3, "fix-e": "sha256:" + "e" * 64}
    assert follow.config_blobs_after(resolved, {D2}) == ("sha256:" + "e" * 64,)
    assert follow.config_blobs_after({"fix-d": D2}, {D2}) == ()
    assert follow.config_blobs_after({"fix-d": "garbage"}, ()) == ()
    assert follow.config_blobs_after({}, ()) == ()  # every HEAD failed


def test_follow_up_is_empty_once_everything_is_known() -> None:
    known = {"fix-1": D1, "fix-2": D1}
    follow = plan_after_listing("v2", [(NEWEST, None)], ["fix-1", "fix-2"], known, {D1})
    assert follow == FollowUp() and count(follow) == 0


def test_follow_up_only_for_newest() -> None:
    needs: list[Need] = [(SEMVER, None), (LEXICAL, None), (DIGEST, "x"), (OFF, None)]
    assert plan("v2", needs, {}).after_listing is False
    assert plan_after_listing("v2", needs, ["1.0.0", "x"], {}, ()) == FollowUp()


def test_newest_candidates_of_several_blocks_are_merged() -> None:
    needs: list[Need] = [(pol("newest", tags="a-.*"), None), (pol("newest", tags="b-.*"), None)]
    follow = plan_after_listing("v2", needs, ["a-1", "b-1", "c-1"], {}, ())
    assert follow.head == ("a-1", "b-1")


def test_need_mirrors_decide() -> None:
    assert need(raw(), DIGEST) == (DIGEST, "master")
    assert need(raw(override="hotfix"), DIGEST) == (DIGEST, None)  # a person's pin
    assert need(raw(override=""), DIGEST) == (DIGEST, "master")
    assert need(raw(tag="bad tag"), DIGEST) == (DIGEST, None)
    assert need(raw(tag=None), DIGEST) == (DIGEST, None)
    assert need(raw(), NEWEST) == (NEWEST, None)
    assert plan("v2", [need(raw(tag="a b"), DIGEST)], {}) == Plan()


def test_count_rejects_nonsense_pages() -> None:
    with pytest.raises(ValueError, match="pages must be at least 1"):
        count(Plan(list_tags=True), pages=0)


# --- every mix of strategies ----------------------------------------------------

tags = st.sampled_from(["master", "staging", "fix-1", "fix-2", "1.0.0", "bad tag", ""])
needs_strategy = st.lists(
    st.tuples(st.sampled_from(sorted(POLICIES)), st.one_of(st.none(), tags)), max_size=12
).map(lambda pairs: [(POLICIES[name], tag) for name, tag in pairs])
caches = st.dictionaries(tags, st.sampled_from([D1, D2, D3, "junk"]), max_size=5)
pages_strategy = st.integers(1, 5)


def digest_tags(needs: list[Need]) -> set[str]:
    valid = {"master", "staging", "fix-1", "fix-2", "1.0.0"}
    return {t for p, t in needs if p.strategy == "digest" and t in valid}


def fresh(cache: dict[str, str]) -> set[str]:
    return {t for t, d in cache.items() if d.startswith("sha256:") and len(d) == 71}


@given(needs=needs_strategy, cache=caches, pages=pages_strategy)
def test_google_never_more_than_one_listing(
    needs: list[Need], cache: dict[str, str], pages: int
) -> None:
    p = plan("google", needs, cache)
    assert p.head == () and p.after_listing is False
    assert count(p, pages) in (0, pages)
    active = {pol.strategy for pol, _ in needs} - {"off"}
    wants_listing = bool(active - {"digest"}) or bool(digest_tags(needs) - fresh(cache))
    assert p.list_tags is wants_listing


@given(needs=needs_strategy, cache=caches, pages=pages_strategy)
def test_v2_keeps_to_the_table(needs: list[Need], cache: dict[str, str], pages: int) -> None:
    p = plan("v2", needs, cache)
    strategies = {pol.strategy for pol, _ in needs}
    assert p.head == tuple(sorted(digest_tags(needs) - fresh(cache)))
    assert p.list_tags is bool(strategies & {"newest", "semver", "lexical"})
    assert p.after_listing is ("newest" in strategies)
    if strategies <= {"digest", "off"}:
        assert count(p, pages) == len(digest_tags(needs) - fresh(cache))
    if strategies <= {"off"}:
        assert count(p, pages) == 0


@given(needs=needs_strategy, cache=caches, api=st.sampled_from(["google", "v2"]))
def test_duplicates_and_order_do_not_matter(
    needs: list[Need], cache: dict[str, str], api: Any
) -> None:
    once = plan(api, needs, cache)
    assert plan(api, needs + needs, cache) == once
    assert plan(api, list(reversed(needs)), cache) == once
    assert len(set(once.head)) == len(once.head) and list(once.head) == sorted(once.head)


@given(
    needs=needs_strategy,
    cache=caches,
    more=caches,
    api=st.sampled_from(["google", "v2"]),
    pages=pages_strategy,
)
def test_a_warmer_cache_never_costs_more(
    needs: list[Need], cache: dict[str, str], more: dict[str, str], api: Any, pages: int
) -> None:
    warmer = {**cache, **{t: d for t, d in more.items() if d != "junk"}}
    assert count(plan(api, needs, warmer), pages) <= count(plan(api, needs, cache), pages)


@given(
    needs=needs_strategy,
    listed=st.lists(tags, max_size=7),
    cache=caches,
    times=st.sets(st.sampled_from([D1, D2, D3])),
)
def test_follow_up_asks_only_for_unknowns(
    needs: list[Need], listed: list[str], cache: dict[str, str], times: set[str]
) -> None:
    follow = plan_after_listing("v2", needs, listed, cache, times)
    assert set(follow.head).isdisjoint(fresh(cache))
    assert set(follow.config_blobs).isdisjoint(times)
    assert list(follow.head) == sorted(set(follow.head))
    assert list(follow.config_blobs) == sorted(set(follow.config_blobs))
    if not any(pol.strategy == "newest" for pol, _ in needs):
        assert follow == FollowUp()
    assert plan_after_listing("google", needs, listed, cache, times) == FollowUp()
