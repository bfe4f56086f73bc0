"""Policies and decisions: each strategy picks what an SRE expects, and nothing else."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.blocks import Edit, RawBlock
from watcher.config import STRATEGIES, Defaults
from watcher.errors import PolicyError
from watcher.references import is_digest, is_tag
from watcher.strategies import (
    Change,
    ImageFacts,
    NoChange,
    Policy,
    Skip,
    candidates,
    decide,
    parse_constraint,
    parse_policy,
    parse_version,
    to_edit,
)

pytestmark = pytest.mark.unit

DIGEST = Defaults(strategy="digest")
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def block(
    tag: str | None = "master",
    shasum: str | None = None,
    override: str | None = None,
    watch: Any = None,
) -> RawBlock:
    return RawBlock(
        document=0,
        path=("app", "image"),
        line=3,
        repository="eu.gcr.io/acme/app",
        tag=tag,
        shasum=shasum,
        override_tag=override,
        watch=watch,
    )


def policy(**watch: Any) -> Policy:
    return parse_policy(watch, DIGEST)


def listed(*tags: str, **extra: Any) -> ImageFacts:
    return ImageFacts(listed=frozenset(tags), **extra)


def semver_pick(constraint: str | None, *tags: str) -> str | None:
    watch: dict[str, Any] = {"strategy": "semver"}
    if constraint is not None:
        watch["semver"] = constraint
    decision = decide(block(), policy(**watch), listed(*tags))
    return decision.new if isinstance(decision, Change) else None


# --- parse_policy ---------------------------------------------------------------


def test_no_watch_takes_defaults() -> None:
    assert parse_policy(None, DIGEST) == Policy(strategy="digest")
    assert parse_policy({}, Defaults(strategy="newest")).strategy == "newest"


def test_off_by_string_and_by_yaml_boolean() -> None:
    assert policy(strategy="off").strategy == "off"
    # YAML 1.1 reads an unquoted `off` as false.
    assert policy(strategy=False).strategy == "off"
    assert decide(block(), policy(strategy=False), ImageFacts(tags={"master": D1})) == NoChange(
        "strategy off"
    )


def test_off_keeps_the_rest_of_the_policy_so_a_pin_is_easy_to_lift() -> None:
    p = policy(strategy="off", tags="main-.*", ignore=["*-dirty"], semver="~1.4")
    assert p.strategy == "off"
    assert p.tags is not None and p.ignore == ("*-dirty",)


@pytest.mark.parametrize(
    ("watch", "message"),
    [
        ("newest", "watch: must be a mapping"),
        (["strategy", "newest"], "watch: must be a mapping"),
        (
            {"stratgy": "newest"},
            "watch.stratgy: unknown key "
            "(known: strategy, tags, ignore, semver, holds, from, after)",
        ),
        ({"strategy": "latest"}, "watch.strategy: must be one of digest, newest, semver"),
        ({"strategy": True}, "watch.strategy: must be one of"),
        ({"strategy": None}, "watch.strategy: must be one of"),
        ({"strategy": "newest", "tags": "main-(.*"}, "watch.tags: invalid regex 'main-(.*'"),
        ({"strategy": "newest", "tags": ""}, "watch.tags: must be a non-empty regex"),
        ({"strategy": "newest", "tags": 5}, "watch.tags: must be a non-empty regex"),
        ({"strategy": "newest", "ignore": "*-dirty"}, "watch.ignore: must be a list of globs"),
        ({"strategy": "newest", "ignore": ["ok", 3]}, "watch.ignore: every glob must be"),
        ({"strategy": "newest", "ignore": [""]}, "watch.ignore: every glob must be"),
        ({"strategy": "semver", "semver": "~>1.4"}, "watch.semver: not a semver constraint"),
        ({"strategy": "semver", "semver": "^1.2 || ^2"}, "'||' is not supported"),
        ({"strategy": "semver", "semver": ">=2 <3"}, "join conditions with commas"),
        ({"strategy": "semver", "semver": ""}, "watch.semver: not a semver constraint"),
        ({"strategy": "semver", "semver": 1.10}, "must be a quoted string"),
        (
            {"semver": "~1.4"},
            "applies only to strategy semver, and this block's strategy is digest",
        ),
        ({"strategy": "newest", "semver": "~1.4"}, "add strategy: semver"),
        ({"tags": "main-.*"}, "strategy digest follows the block's `tag`"),
        ({"strategy": "digest", "ignore": ["x"]}, "strategy digest follows the block's `tag`"),
    ],
)
def test_policy_errors_name_the_key_and_the_fix(watch: object, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(watch, DIGEST)
    assert message in str(info.value)


def test_semver_without_constraint_follows_the_highest_release() -> None:
    p = policy(strategy="semver")
    assert p.semver is not None and p.semver.text == "*"
    assert semver_pick(None, "1.2.3", "10.0.0", "2.0.0", "11.0.0-rc.1") == "10.0.0"


def test_semver_default_strategy_with_constraint_in_block() -> None:
    p = parse_policy({"semver": "~1.4"}, Defaults(strategy="semver"))
    assert p.strategy == "semver" and p.semver is not None and p.semver.text == "~1.4"


def test_constraint_spacing_is_forgiven() -> None:
    assert parse_constraint(" >= 2 , < 3 ").spec == parse_constraint(">=2,<3").spec
    assert semver_pick(">= 2, < 3", "1.9.0", "2.4.0", "3.0.0") == "2.4.0"


# --- candidates -----------------------------------------------------------------


def test_tags_regex_must_match_the_whole_tag() -> None:
    p = policy(strategy="lexical", tags="main-[0-9]+")
    assert candidates(p, ["main-1", "main-22", "xmain-3", "main-4x", "main-"]) == [
        "main-1",
        "main-22",
    ]


def test_ignore_globs_remove_tags_case_sensitively() -> None:
    p = policy(strategy="lexical", ignore=["*-dirty", "tmp-*"])
    tags = ["a", "b-dirty", "tmp-1", "TMP-2", "c-DIRTY"]
    assert candidates(p, tags) == ["TMP-2", "a", "c-DIRTY"]


def test_grammar_breaking_tags_are_never_candidates() -> None:
    p = policy(strategy="lexical")
    bad = ["-lead", ".lead", "has space", "x" * 129, "", "über", "a/b", "a:b", "v1.0.0+build"]
    assert candidates(p, [*bad, "ok"]) == ["ok"]
    assert decide(block(), p, listed(*bad)) == Skip("no tag matches the lexical policy")


def test_candidates_are_sorted_and_distinct() -> None:
    p = policy(strategy="newest")
    assert candidates(p, ["b", "a", "b", "c"]) == ["a", "b", "c"]


def test_version_parsing_accepts_v_prefix_and_only_full_versions() -> None:
    assert parse_version("v1.4.2") == parse_version("1.4.2")
    assert parse_version("1.5.0-rc.1") is not None
    for tag in ("1.4", "1", "1.4.2.1", "01.2.3", "V1.2.3", "vv1.2.3", "latest", "1.2.3_x"):
        assert parse_version(tag) is None, tag


# --- semver ---------------------------------------------------------------------

VERSIONS = (
    "0.9.0",
    "1.2.0",
    "1.3.9",
    "v1.4.0",
    "1.4.7",
    "1.4.8-rc.1",
    "1.5.0",
    "1.9.9",
    "2.0.0-rc.1",
    "2.0.0",
    "v2.5.1",
    "3.0.0-alpha",
    "3.0.0",
    "latest",
    "1.4",
)


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("~1.4", "1.4.7"),  # not 1.4.8-rc.1: the constraint names no pre-release
        ("~1.4.0", "1.4.7"),
        ("^1.2", "1.9.9"),
        (">=2,<3", "v2.5.1"),
        ("<3", "v2.5.1"),  # 3.0.0-alpha is below 3.0.0, but a pre-release
        ("==1.4.0", "v1.4.0"),
        ("1.4.*", "1.4.7"),
        ("^0.9", "0.9.0"),
        (">=3", "3.0.0"),
        # Naming a pre-release admits the pre-releases that satisfy the constraint.
        (">=1.4.8-rc.1,<1.5", "1.4.8-rc.1"),
        (">=2.0.0-rc.1,<2.0.1", "2.0.0"),
        # The library's rule, pinned: `<2.0.0` also shuts out 2.0.0's own pre-releases.
        (">=2.0.0-rc.1,<2.0.0", None),
        (">=3.0.0-0", "3.0.0"),
        ("~9", None),
    ],
)
def test_semver_picks_the_highest_satisfying_version(constraint: str, expected: str | None) -> None:
    assert semver_pick(constraint, *VERSIONS) == expected


def test_semver_prereleases_only_when_the_constraint_names_one() -> None:
    tags = ("1.4.7", "1.4.8-rc.1", "1.25.3-alpine")
    assert semver_pick("~1.4", *tags) == "1.4.7"
    assert semver_pick(">=1.0.0", *tags) == "1.4.7"
    assert semver_pick(">=1.4.8-rc.0", *tags) == "1.25.3-alpine"
    assert semver_pick(">=1.4.8-rc.0,<1.5", *tags) == "1.4.8-rc.1"


def test_semver_orders_by_version_not_by_string() -> None:
    assert semver_pick("^1", "1.9.0", "1.10.0", "1.2.0") == "1.10.0"
    assert semver_pick(">=1.0.0-rc.0", "1.0.0-rc.9", "1.0.0-rc.10") == "1.0.0-rc.10"


def test_semver_tie_between_v_and_bare_tag_keeps_current_else_greatest_name() -> None:
    p = policy(strategy="semver", semver="^1")
    facts = listed("1.2.3", "v1.2.3")
    assert decide(block(), p, facts) == Change("overrideTag", None, "v1.2.3")
    assert decide(block(override="1.2.3"), p, facts) == NoChange("up to date")


def test_semver_respects_tags_and_ignore() -> None:
    p = policy(strategy="semver", semver="^1", tags="v.*", ignore=["*.9"])
    assert decide(block(), p, listed("1.8.0", "v1.5.0", "v1.5.9")) == Change(
        "overrideTag", None, "v1.5.0"
    )


# --- lexical --------------------------------------------------------------------


def test_lexical_is_plain_string_order() -> None:
    p = policy(strategy="lexical", tags="build-[0-9]+")
    # Code-point order, documented: build-9 sorts after build-10.
    assert decide(block(), p, listed("build-9", "build-10", "other")) == Change(
        "overrideTag", None, "build-9"
    )
    assert decide(block(), policy(strategy="lexical"), listed("B", "a", "Z")) == Change(
        "overrideTag", None, "a"
    )


def test_tag_strategies_overwrite_override_tag_and_treat_empty_as_absent() -> None:
    p = policy(strategy="lexical")
    assert decide(block(override="2024-01"), p, listed("2024-01", "2024-02")) == Change(
        "overrideTag", "2024-01", "2024-02"
    )
    assert decide(block(override=""), p, listed("a")) == Change("overrideTag", None, "a")
    assert decide(block(override="a"), p, listed("a")) == NoChange("up to date")


def test_tag_strategies_need_a_full_listing() -> None:
    # Deciding from the few tags whose digest happens to be known could move backwards.
    for strategy in ("newest", "semver", "lexical"):
        facts = ImageFacts(tags={"1.0.0": D1}, times={D1: 5.0})
        assert decide(block(), policy(strategy=strategy), facts) == Skip(
            "no tag listing for this image"
        )


# --- newest ---------------------------------------------------------------------


def test_newest_picks_the_most_recent_upload() -> None:
    p = policy(strategy="newest", tags="fixes_.*")
    facts = listed(
        "fixes_a-1",
        "fixes_b-2",
        "main-3",
        tags={"fixes_a-1": D1, "fixes_b-2": D2, "main-3": D3},
        times={D1: 200.0, D2: 100.0, D3: 999.0},
    )
    assert decide(block(override="fixes_b-2"), p, facts) == Change(
        "overrideTag", "fixes_b-2", "fixes_a-1"
    )


def test_newest_ignores_tags_without_a_known_time_and_reports_when_none_has_one() -> None:
    p = policy(strategy="newest")
    facts = listed("a", "b", "c", tags={"a": D1, "b": D2}, times={D1: 1.0})
    assert decide(block(), p, facts) == Change("overrideTag", None, "a")
    none_timed = listed("a", "b", tags={"a": D1})
    assert decide(block(), p, none_timed) == Skip(
        "none of the 2 matching tags has a known upload time"
    )


def test_newest_only_trusts_the_listing_for_which_tags_exist() -> None:
    # A tag still in the digest cache but gone from the registry is not a candidate.
    p = policy(strategy="newest")
    facts = listed("a", tags={"a": D1, "deleted": D2}, times={D1: 1.0, D2: 9.0})
    assert decide(block(), p, facts) == Change("overrideTag", None, "a")


def test_newest_ties_keep_the_current_alias_else_greatest_name() -> None:
    p = policy(strategy="newest")
    facts = listed(
        "sha-9d239fd",
        "branch-latest",
        tags={"sha-9d239fd": D1, "branch-latest": D1},
        times={D1: 7.0},
    )
    assert decide(block(), p, facts) == Change("overrideTag", None, "sha-9d239fd")
    assert decide(block(override="branch-latest"), p, facts) == NoChange("up to date")


def test_no_candidate_is_a_skip() -> None:
    assert decide(block(), policy(strategy="newest", tags="x-.*"), listed("a")) == Skip(
        "no tag matches the newest policy"
    )


# --- digest ---------------------------------------------------------------------


def test_digest_writes_the_shasum_the_tag_points_at() -> None:
    facts = ImageFacts(tags={"master": D2})
    p = policy()
    assert decide(block(shasum=D1), p, facts) == Change("shasum", D1, D2)
    assert decide(block(shasum=None), p, facts) == Change("shasum", None, D2)
    assert decide(block(shasum=""), p, facts) == Change("shasum", None, D2)
    assert decide(block(shasum=D2), p, facts) == NoChange("up to date")


def test_digest_block_with_override_tag_is_a_persons_pin() -> None:
    decision = decide(
        block(shasum=D1, override="hotfix-1"), policy(), ImageFacts(tags={"master": D2})
    )
    assert isinstance(decision, NoChange) and "pinned" in decision.reason
    # An empty overrideTag is no pin.
    decision = decide(block(shasum=D1, override=""), policy(), ImageFacts(tags={"master": D2}))
    assert decision == Change("shasum", D1, D2)


@pytest.mark.parametrize(
    ("the_block", "facts", "reason"),
    [
        (block(tag=None), ImageFacts(tags={"master": D1}), "no tag to follow"),
        (block(tag=""), ImageFacts(tags={"": D1}), "no tag to follow"),
        (block(tag="bad tag"), ImageFacts(tags={"bad tag": D1}), "breaks the OCI tag grammar"),
        (block(), ImageFacts(tags={"main": D1}), "tag 'master' not found"),
        (block(), ImageFacts(tags={"master": "sha256:ABC"}), "breaks the digest grammar"),
        (block(), ImageFacts(tags={"master": "md5:" + "1" * 32}), "breaks the digest grammar"),
    ],
)
def test_digest_skips_with_a_reason(the_block: RawBlock, facts: ImageFacts, reason: str) -> None:
    decision = decide(the_block, policy(), facts)
    assert isinstance(decision, Skip) and reason in decision.reason


def test_to_edit_carries_what_the_change_was_decided_against() -> None:
    b = block(shasum=D1)
    assert to_edit(b, Change("shasum", D1, D2)) == Edit(
        document=0,
        path=("app", "image"),
        field="shasum",
        old=D1,
        new=D2,
        repository="eu.gcr.io/acme/app",
        tag="master",
    )


# --- properties -----------------------------------------------------------------

# Tags drawn from a small alphabet with grammar-breaking characters mixed in,
# so that versions, collisions and invalid tags all occur.
any_tag = st.text(alphabet="v0123456789.-_abc /:+", min_size=0, max_size=12)
digests = st.sampled_from([D1, D2, D3, "sha256:bad", "nope"])
watches = st.sampled_from(
    [
        {"strategy": "newest"},
        {"strategy": "lexical"},
        {"strategy": "semver"},
        {"strategy": "semver", "semver": "^1"},
        {"strategy": "semver", "semver": ">=0.0.0-0"},
        {"strategy": "lexical", "tags": "[a-c].*", "ignore": ["*-*"]},
        {"strategy": "digest"},
        {"strategy": "off"},
    ]
)


@st.composite
def facts_strategy(draw: st.DrawFn) -> ImageFacts:
    tags = draw(st.lists(any_tag, max_size=12))
    mapping = {tag: draw(digests) for tag in tags if draw(st.booleans())}
    times = {d: float(draw(st.integers(0, 3))) for d in (D1, D2, D3, "sha256:bad")}
    return ImageFacts(tags=mapping, listed=frozenset(tags), times=times)


@given(
    watch=watches,
    facts=facts_strategy(),
    tag=st.one_of(st.none(), any_tag),
    override=st.one_of(st.none(), any_tag),
    shasum=st.one_of(st.none(), digests),
)
def test_changes_always_respect_the_grammar_and_decisions_are_deterministic(
    watch: dict[str, Any],
    facts: ImageFacts,
    tag: str | None,
    override: str | None,
    shasum: str | None,
) -> None:
    b = block(tag=tag, shasum=shasum, override=override)
    p = policy(**watch)
    decision = decide(b, p, facts)
    if isinstance(decision, Change):
        assert decision.new != decision.old
        if decision.field == "shasum":
            assert p.strategy == "digest" and is_digest(decision.new)
        else:
            assert p.strategy in ("newest", "semver", "lexical") and is_tag(decision.new)
            assert decision.new in candidates(p, facts.listed or ())
    # Same inputs in another order: same decision.
    listed_order = sorted(facts.listed or (), reverse=True)
    random.Random(0).shuffle(listed_order)
    shuffled = ImageFacts(
        tags=dict(reversed(list(facts.tags.items()))),
        listed=frozenset(listed_order),
        times=dict(reversed(list(facts.times.items()))),
    )
    assert decide(b, p, shuffled) == decision


@given(watch=watches, facts=facts_strategy())
def test_applying_a_change_is_stable(watch: dict[str, Any], facts: ImageFacts) -> None:
    # Once written, the next cycle with the same facts decides nothing new.
    p = policy(**watch)
    b = block()
    decision = decide(b, p, facts)
    if isinstance(decision, Change):
        if decision.field == "shasum":
            b = block(shasum=decision.new)
        else:
            b = block(override=decision.new)
        assert isinstance(decide(b, p, facts), NoChange)


def test_every_strategy_name_parses() -> None:
    for strategy in STRATEGIES:
        watch: dict[str, Any] = {"strategy": strategy}
        if strategy == "follow":  # the one strategy that needs a key more: its branch
            watch["from"] = "environment/staging"
        assert parse_policy(watch, DIGEST).strategy == strategy


def test_equal_watch_mappings_give_equal_hashable_policies() -> None:
    # The engine may group blocks by policy.
    watch = {"strategy": "semver", "semver": "~1.4", "tags": "v.*", "ignore": ["x"]}
    assert parse_policy(watch, DIGEST) == parse_policy(dict(watch), DIGEST)
    assert len({parse_policy(watch, DIGEST), parse_policy(dict(watch), DIGEST)}) == 1
