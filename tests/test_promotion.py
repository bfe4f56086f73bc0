"""Promotion, the pure part: following blocks linked to their sources, the copy each
needs at a given time, the configuration that says who follows whom. No git, no
registry: watch sets and histories are built here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from watcher.blocks import BlockId, RawBlock
from watcher.capacity import image_requests
from watcher.config import Defaults, load, load_text
from watcher.errors import ConfigError, PolicyError
from watcher.gitops.discovery import FoundBlock
from watcher.planner import need, plan
from watcher.promotion import Origin, link, promote
from watcher.references import canonical_name
from watcher.steer import trailers
from watcher.steer.holds import BlockMarks, Event, Stamp, Steer, derive
from watcher.steer.status import row
from watcher.steer.trailers import Mark
from watcher.strategies import parse_policy

pytestmark = pytest.mark.unit

D1, D2 = ("sha256:" + c * 64 for c in "12")
STAGING, DEV, GREEN = "environment/staging", "environment/dev-1", "environment/greenlight"
API = "apps/api/values.yaml"
IMAGE = "eu.gcr.io/acme/api"
HEADS = {STAGING: "a" * 40, DEV: "b" * 40, GREEN: "c" * 40, "environment/dev-2": "d" * 40}
FOLLOW_STAGING = {"strategy": "follow", "from": STAGING}


def found(
    branch: str,
    watch: object = None,
    *,
    shasum: str | None = None,
    override: str | None = None,
    file: str = API,
    path: tuple[str | int, ...] = ("image",),
    image: str = IMAGE,
    steer: Steer | None = None,
) -> FoundBlock:
    raw = RawBlock(0, path, 3, image, "master", shasum, override, watch)
    block = FoundBlock(
        BlockId(branch, file, path), raw, canonical_name(image), parse_policy(watch, Defaults())
    )
    return replace(block, steer=steer) if steer is not None else block


def linked(*blocks: FoundBlock) -> tuple[dict[BlockId, FoundBlock], list[str]]:
    out, problems = link(blocks, HEADS)
    return {block.id: block for block in out}, [f"{b.id}: {why}" for b, why in problems]


def test_a_follower_copies_the_same_block_on_its_source_branch() -> None:
    source = found(STAGING, shasum=D1)
    follower = found(DEV, FOLLOW_STAGING, shasum=D2)
    blocks, problems = linked(source, follower)
    assert problems == []
    origin = blocks[follower.id].origin
    assert origin == Origin(STAGING, 0.0, HEADS[STAGING], source.id, "shasum", D1)
    assert blocks[source.id].origin is None
    step = promote(blocks[follower.id], now=0)
    assert step.update is not None and step.update.strategy == "follow"
    edit = step.update.edit
    assert (edit.field, edit.old, edit.new) == ("shasum", D2, D1)
    assert step.update.source == f"{STAGING}@{HEADS[STAGING]}"
    assert f"(from {STAGING}@{HEADS[STAGING]})" in step.update.describe()


def test_an_override_tag_on_the_source_is_copied_as_override_tag() -> None:
    source = found(STAGING, {"strategy": "newest", "tags": "main-.*"}, override="main-7")
    follower = found(DEV, FOLLOW_STAGING, shasum=D2)
    blocks, _ = linked(source, follower)
    step = promote(blocks[follower.id], now=0)
    assert step.update is not None
    assert (step.update.edit.field, step.update.edit.new) == ("overrideTag", "main-7")
    # Up to date once written: nothing more.
    done = replace(
        blocks[follower.id], raw=blocks[follower.id].raw.with_value("overrideTag", "main-7")
    )
    assert promote(done, now=0).update is None


def test_without_the_same_path_the_one_block_following_the_image_is_the_source() -> None:
    source = found(STAGING, shasum=D1, file="apps/api-v2/values.yaml", path=("api", "image"))
    other = found(STAGING, shasum=D2, image="eu.gcr.io/acme/web")
    follower = found(DEV, FOLLOW_STAGING)
    blocks, _ = linked(source, other, follower)
    assert blocks[follower.id].origin is not None
    assert blocks[follower.id].origin.block == source.id  # type: ignore[union-attr]
    # Two candidates in other files: ambiguous, the block waits and says why.
    twin = found(STAGING, shasum=D2, file="apps/api-v3/values.yaml")
    blocks, problems = linked(source, twin, follower)
    step = promote(blocks[follower.id], now=0)
    assert problems == [] and step.update is None and step.failing
    assert "ambiguous" in step.reason


def test_a_chain_links_every_follower_to_its_own_source() -> None:
    green = found(GREEN, shasum=D1)
    staging = found(STAGING, {"strategy": "follow", "from": GREEN}, shasum=D2)
    dev = found(DEV, FOLLOW_STAGING, shasum=D2)
    blocks, problems = linked(green, staging, dev)
    assert problems == []
    assert promote(blocks[staging.id], now=0).update is not None
    # dev follows what staging holds now, not what greenlight holds: one link at a time.
    assert promote(blocks[dev.id], now=0).update is None


def test_mistakes_are_problems_naming_the_block() -> None:
    cycle_a = found(STAGING, {"strategy": "follow", "from": DEV}, shasum=D1)
    cycle_b = found(DEV, FOLLOW_STAGING, shasum=D1)
    itself = found(GREEN, {"strategy": "follow", "from": GREEN}, file="apps/x/values.yaml")
    nowhere = found(
        GREEN, {"strategy": "follow", "from": "environment/nope"}, file="apps/y/values.yaml"
    )
    blocks, problems = linked(cycle_a, cycle_b, itself, nowhere)
    assert sorted(problems) == sorted(
        [
            f"{cycle_a.id}: watch.from: follows a cycle: {STAGING} -> {DEV} -> {STAGING}",
            f"{cycle_b.id}: watch.from: follows a cycle: {DEV} -> {STAGING} -> {DEV}",
            f"{itself.id}: watch.from: {GREEN} is this block's own branch: "
            "a block cannot follow itself",
            f"{nowhere.id}: watch.from: no environment branch environment/nope "
            "(it must exist and match git.branches)",
        ]
    )
    for block in blocks.values():
        step = promote(block, now=0)
        assert step.update is None and step.failing


def test_a_rules_mistake_names_the_rule() -> None:
    follower = found(DEV, FOLLOW_STAGING)
    by_rule = replace(
        follower,
        policy=replace(follower.policy, source="environment/nope", rule="shards.yaml:41"),
    )
    _, problems = linked(by_rule)
    assert problems == [
        f"{by_rule.id}: watch.from: no environment branch environment/nope "
        "(it must exist and match git.branches) (promotions rule at shards.yaml:41)"
    ]


def test_after_holds_a_value_back_until_it_has_stood_long_enough() -> None:
    source = found(STAGING, shasum=D1)
    follower = found(DEV, {**FOLLOW_STAGING, "after": "30m"}, shasum=D2)
    blocks, _ = linked(source, follower)
    since = Stamp("e" * 40, "image-watcher <w@example.com>", 1_000_000)
    waiting = replace(
        blocks[follower.id],
        origin=replace(blocks[follower.id].origin, since=since),  # type: ignore[type-var]
    )
    early = promote(waiting, now=1_000_000 + 1799)
    assert early.update is None and not early.failing
    assert early.ready == 1_000_000 + 1800 and "30m" in early.reason
    late = promote(waiting, now=1_000_000 + 1800)
    assert late.update is not None
    # The commit named is the one that put the value there, not the branch's head.
    assert late.update.source == f"{STAGING}@{'e' * 40}"


def test_pins_and_holds_on_the_follower_win() -> None:
    source = found(STAGING, shasum=D1)
    pinned = found(DEV, FOLLOW_STAGING, shasum=D2, override="hotfix-1")
    blocks, _ = linked(source, pinned)
    policy = blocks[pinned.id].policy
    # A person's overrideTag on a follower of a digest is a pin, as on a digest block.
    steer = derive(pinned.raw, policy, None, "shasum")
    assert steer.state == "pinned"
    assert promote(replace(blocks[pinned.id], steer=steer), now=0).update is None
    # Held until released: nothing written, whatever the source holds.
    held = Steer("held", "shasum", D2, "until-released", D1)
    assert promote(replace(blocks[pinned.id], steer=held), now=0).update is None
    # Held until a new build: the value the hold replaced is not written again.
    follower = found(DEV, FOLLOW_STAGING, shasum=D2)
    blocks, _ = linked(source, follower)
    held = Steer("held", "shasum", D2, "until-new-build", D1)
    assert promote(replace(blocks[follower.id], steer=held), now=0).update is None


def test_a_copied_override_tag_is_not_a_pin_and_is_cleared_after_the_digest() -> None:
    # The source dropped its overrideTag (a released pin): the follower's copy goes too,
    # the digest first so that the image rendered never goes back.
    source = found(STAGING, shasum=D1)
    follower = found(DEV, FOLLOW_STAGING, shasum=D2, override="main-7")
    blocks, _ = linked(source, follower)
    marks = BlockMarks(
        latest={
            "overrideTag": Event(
                Mark("set", follower.id.ref, "overrideTag", "main-7"), Stamp("f" * 40, "w", 1)
            )
        }
    )
    steer = derive(follower.raw, blocks[follower.id].policy, marks, "shasum")
    assert steer.state == "following"
    block = replace(blocks[follower.id], steer=steer)
    first = promote(block, now=0).update
    assert first is not None and (first.edit.field, first.edit.new) == ("shasum", D1)
    block = replace(block, raw=block.raw.with_value("shasum", D1))
    second = promote(block, now=0).update
    assert second is not None and (second.edit.field, second.edit.new) == ("overrideTag", None)


def test_a_source_value_that_breaks_the_grammar_is_never_copied() -> None:
    source = found(STAGING, shasum="sha256:nothex")
    follower = found(DEV, FOLLOW_STAGING)
    blocks, _ = linked(source, follower)
    step = promote(blocks[follower.id], now=0)
    assert step.update is None and step.failing and "not a valid digest" in step.reason


def test_follow_blocks_cost_no_registry_request() -> None:
    follower = found(DEV, FOLLOW_STAGING)
    assert plan("google", [need(follower.raw, follower.policy)], {}).list_tags is False
    v2 = plan("v2", [need(follower.raw, follower.policy)], {})
    assert (v2.list_tags, v2.head) == (False, ())


def test_an_image_followed_only_by_followers_costs_nothing_in_the_reports() -> None:
    cfg = load_text("git: {url: /tmp/x}\n", "p.yaml", {})
    followers = [found(DEV, FOLLOW_STAGING), found("environment/dev-2", FOLLOW_STAGING)]
    assert image_requests(cfg, canonical_name(IMAGE), followers) == 0
    assert image_requests(cfg, canonical_name(IMAGE), [*followers, found(STAGING)]) == 1


def test_a_held_follower_says_until_when() -> None:
    follower = found(DEV, FOLLOW_STAGING, shasum=D2)
    held = replace(follower, steer=Steer("held", "shasum", D2, "until-new-build", D1))
    assert row(held).reason.endswith(f"until {STAGING} holds a new value (or `watcher release`)")


def test_status_shows_promoted_with_its_source() -> None:
    source = found(STAGING, shasum=D1)
    follower = found(DEV, FOLLOW_STAGING, shasum=D1)
    blocks, _ = linked(source, follower)
    shown = row(blocks[follower.id])
    assert shown.state == "promoted"
    assert shown.source == f"{source.id}@{HEADS[STAGING]}"
    assert shown.reason == f"promoted from {STAGING} (commit {HEADS[STAGING][:12]})"
    assert row(blocks[source.id]).state == "following"
    failing = row(blocks[follower.id], "no source")
    assert (failing.state, failing.reason) == ("failing", "no source")
    # From git alone (`watcher status`), a follower without a source is failing too.
    orphan = found("environment/dev-2", FOLLOW_STAGING, image="eu.gcr.io/acme/other")
    blocks, _ = linked(source, orphan)
    shown = row(blocks[orphan.id])
    assert shown.state == "failing"
    assert shown.reason.startswith(f"no block on {STAGING} at {API}#image or following")


@pytest.mark.parametrize(
    "watch,message",
    [
        ({"strategy": "follow"}, "watch.from: strategy follow needs the branch to follow"),
        ({"strategy": "follow", "from": ""}, "watch.from: must be a branch name"),
        ({**FOLLOW_STAGING, "after": 30}, "watch.after: must be a duration"),
        ({**FOLLOW_STAGING, "after": "soon"}, "watch.after: not a duration"),
        ({"strategy": "digest", "from": STAGING}, "watch.from and watch.after: apply only"),
        ({**FOLLOW_STAGING, "tags": "main-.*"}, "watch: tags and ignore choose among tags"),
    ],
)
def test_policy_mistakes_name_the_key(watch: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(watch, Defaults())
    assert str(caught.value).startswith(message), str(caught.value)


def test_promotions_rules_load_with_defaults_and_lines() -> None:
    cfg = load_text(
        f"""git: {{url: /tmp/x}}
promotions:
  - from: {STAGING}
    to: ["environment/dev-*"]
    after: 30m
  - from: {GREEN}
    to: {STAGING}
""",
        "p.yaml",
        {},
    )
    first, second = cfg.promotions
    assert (first.source, first.to, first.after, first.line) == (
        STAGING,
        ("environment/dev-*",),
        1800.0,
        3,
    )
    assert (second.source, second.to, second.after) == (GREEN, (STAGING,), 0.0)
    assert cfg.promotion_for("environment/dev-2") == first
    assert cfg.promotion_for(STAGING) == second
    assert cfg.promotion_for(GREEN) is None
    assert load_text("git: {url: /tmp/x}\n", "p.yaml", {}).promotions == ()


def test_promotions_mistakes_are_file_line_problems() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(
            f"""git: {{url: /tmp/x}}
defaults: {{strategy: follow}}
promotions:
  - from: {STAGING}
    to: ["environment/dev-*", {STAGING}]
    after: soon
  - to: ["x"]
    every: 1m
  - from: environment/dev-1
    to: ["environment/staging"]
""",
            "p.yaml",
            {},
        )
    problems = caught.value.problems
    assert any(p.startswith("p.yaml:2: defaults.strategy:") for p in problems), problems
    assert (
        f"p.yaml:5: promotions[0].to: names {STAGING}, its own from: a branch cannot follow itself"
        in problems
    )
    assert any(p.startswith("p.yaml:6: promotions[0].after: not a duration") for p in problems)
    assert "p.yaml:7: promotions[1].from: is required" in problems
    assert any(p.startswith("p.yaml:8: promotions[1].every: unknown key") for p in problems)
    assert (
        f"p.yaml:9: promotions[2].from: environment/dev-1 and {STAGING} follow each other "
        "(with p.yaml:4): a cycle"
    ) in problems


def test_the_commit_message_names_the_source_of_every_promoted_value() -> None:
    text = trailers.message(
        "image-watcher: update 1 image(s) on environment/dev-1",
        ["- ..."],
        [Mark("set", f"{API}#image", "shasum", D1)],
        [trailers.source_line(f"{API}#image", f"{STAGING}@{'a' * 40}")],
    )
    last = text.strip().split("\n\n")[-1].splitlines()
    assert last == [
        f"Image-Watcher-Set: {API}#image shasum={D1}",
        f"Image-Watcher-From: {API}#image {STAGING}@{'a' * 40}",
    ]
    # Holds read the marks only: the source line is not one.
    assert trailers.parse_block("\n".join(last)) == [Mark("set", f"{API}#image", "shasum", D1)]


def test_the_example_shards_yaml_documents_promotions_and_stays_valid() -> None:
    cfg = load(Path(__file__).parent.parent / "shards.yaml", {})
    assert cfg.promotions and cfg.promotions[0].source == STAGING
