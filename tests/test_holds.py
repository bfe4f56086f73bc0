"""Holds from history: trailers written and read back, each block's state, and what the
watcher may write. Pure: history in, state out, no git."""

from __future__ import annotations

import pytest

from watcher.blocks import RawBlock
from watcher.config import Defaults
from watcher.steer import trailers
from watcher.steer.holds import Book, Logged, Stamp, derive, fold
from watcher.steer.trailers import Mark
from watcher.strategies import parse_policy

pytestmark = pytest.mark.unit

REF = "apps/api/values.yaml#image"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
DIGEST = parse_policy(None, Defaults())
RELEASED = parse_policy({"holds": "until-released"}, Defaults())
NEWEST = parse_policy({"strategy": "newest", "tags": "main-.*"}, Defaults())


def stamp(n: int, author: str = "image-watcher <w@example.com>") -> Stamp:
    return Stamp(f"{n:040x}", author, 1_700_000_000 + n)


def block(shasum: str | None = None, override: str | None = None) -> RawBlock:
    return RawBlock(0, ("image",), 1, "eu.gcr.io/p/api", "master", shasum, override)


def history(*entries: tuple[int, Mark | None]) -> Book:
    """A book from (commit number, mark) pairs, oldest first as people tell it."""
    commits = [Logged(stamp(n), (mark,) if mark else ()) for n, mark in entries]
    return fold(reversed(commits))


def test_trailers_round_trip_through_a_message() -> None:
    marks = [
        Mark("set", REF, "shasum", D1),
        Mark("pin", "apps/web/values.yaml#side cars[0].image", "overrideTag", "v1.4.2"),
        Mark("release", REF, "overrideTag", None),
    ]
    text = trailers.message("image-watcher: update 1 image(s)", ["- a: b -> c"], marks)
    last = text.strip().split("\n\n")[-1]
    assert trailers.parse_block(last) == marks
    assert last.splitlines()[0] == f"Image-Watcher-Set: {REF} shasum={D1}"
    # git prints keys as written; matching is case-insensitive, as git's own.
    assert trailers.parse("image-watcher-set", f"{REF} shasum={D1}") == marks[0]


@pytest.mark.parametrize(
    "key,value",
    [
        ("Signed-off-by", "Dev <dev@example.com>"),
        ("Image-Watcher-Set", f"{REF} digest={D1}"),  # not a field role
        ("Image-Watcher-Set", f"{REF}"),
        ("Image-Watcher-Frobnicate", f"{REF} shasum={D1}"),
        ("Image-Watcher-Set", f"shasum={D1}"),
    ],
)
def test_other_and_malformed_trailers_are_not_marks(key: str, value: str) -> None:
    assert trailers.parse(key, value) is None


def test_a_block_the_watcher_never_wrote_is_followed() -> None:
    steer = derive(block(D1), DIGEST, None)
    assert steer.state == "following" and steer.value == D1 and steer.changed is None
    assert steer.lets(D2) and steer.needs_facts


def test_following_while_the_value_is_the_watchers() -> None:
    book = history((1, Mark("set", REF, "shasum", D1)), (2, None))
    steer = derive(block(D1), DIGEST, book[REF])
    assert steer.state == "following"
    assert steer.changed == stamp(1) and steer.action == "set"


def test_a_revert_holds_until_a_build_that_is_neither_value() -> None:
    # The watcher moved D1 -> D2; a person reverted to D1 (a commit without marks).
    book = history(
        (1, Mark("set", REF, "shasum", D1)), (2, Mark("set", REF, "shasum", D2)), (3, None)
    )
    steer = derive(block(D1), DIGEST, book[REF])
    assert steer.state == "held"
    assert (steer.value, steer.replaced, steer.holds) == (D1, D2, "until-new-build")
    assert steer.event is None and steer.changed is None and steer.action == "edit"
    assert not steer.lets(D2)  # the broken build the person reverted
    assert not steer.lets(D1)
    assert steer.lets(D3)  # a new build
    assert steer.needs_facts  # it must learn of the new build: the image's one look-up


def test_a_hand_edit_of_shasum_is_a_hold_too() -> None:
    book = history((1, Mark("set", REF, "shasum", D1)), (2, None))
    steer = derive(block(D3), DIGEST, book[REF])
    assert steer.state == "held" and steer.value == D3 and steer.replaced == D1
    assert not steer.lets(D1) and steer.lets(D2)


def test_until_released_never_lets_and_needs_no_look_up() -> None:
    book = history((1, Mark("set", REF, "shasum", D2)), (2, None))
    steer = derive(block(D1), RELEASED, book[REF])
    assert steer.state == "held" and steer.holds == "until-released"
    assert not steer.lets(D3) and not steer.needs_facts


def test_release_ends_a_hold_and_a_later_edit_holds_again() -> None:
    book = history(
        (1, Mark("set", REF, "shasum", D2)),
        (2, None),  # reverted to D1
        (3, Mark("release", REF, "shasum", D1)),
    )
    released = derive(block(D1), RELEASED, book[REF])
    assert released.state == "following" and released.action == "release"
    assert released.changed == stamp(3)
    # A hand edit after the release: held again, replacing the watcher's last value.
    again = derive(block(D3), RELEASED, book[REF])
    assert again.state == "held" and again.replaced == D2


def test_rollback_holds_at_its_value_and_remembers_the_watchers() -> None:
    book = history(
        (1, Mark("set", REF, "shasum", D2)),
        (2, Mark("rollback", REF, "shasum", D1)),
        (3, Mark("rollback", REF, "shasum", D3)),  # rolled back twice
    )
    steer = derive(block(D3), DIGEST, book[REF])
    assert steer.state == "held" and steer.action == "rollback"
    # Still away from the watcher's D2 (the build rolled back), not from D1.
    assert steer.replaced == D2 and not steer.lets(D2) and steer.lets(D1)
    assert steer.changed == stamp(3)


def test_the_watchers_next_write_ends_the_hold() -> None:
    book = history(
        (1, Mark("set", REF, "shasum", D2)), (2, None), (3, Mark("set", REF, "shasum", D3))
    )
    assert derive(block(D3), DIGEST, book[REF]).state == "following"


def test_a_digest_block_with_override_tag_is_pinned_whoever_wrote_it() -> None:
    by_hand = derive(block(D1, "fixes-1"), DIGEST, None)
    assert by_hand.state == "pinned" and by_hand.value == "fixes-1"
    assert by_hand.field == "overrideTag" and not by_hand.needs_facts
    book = history((1, Mark("pin", REF, "overrideTag", "fixes-1")))
    pinned = derive(block(D1, "fixes-1"), DIGEST, book[REF])
    assert pinned.action == "pin" and pinned.changed == stamp(1)


def test_a_tag_strategy_pin_stays_until_released() -> None:
    book = history(
        (1, Mark("set", REF, "overrideTag", "main-2")),
        (2, Mark("pin", REF, "overrideTag", "main-1")),
    )
    raw = block(None, "main-1")
    steer = derive(raw, NEWEST, book[REF])
    assert steer.state == "pinned" and not steer.lets("main-3") and not steer.needs_facts
    book = fold([Logged(stamp(3), (Mark("release", REF, "overrideTag", "main-1"),))], book)
    steer = derive(raw, NEWEST, book[REF])
    assert steer.state == "following" and steer.lets("main-3")


def test_marks_of_the_other_field_do_not_count() -> None:
    # A block that was `newest` (overrideTag) and is now `digest` (shasum).
    book = history((1, Mark("set", REF, "overrideTag", "main-2")))
    assert derive(block(D1), DIGEST, book[REF]).state == "following"


def test_off_blocks_are_off() -> None:
    off = parse_policy({"strategy": "off"}, Defaults())
    book = history((1, Mark("set", REF, "shasum", D2)))
    steer = derive(block(D1), off, book[REF])
    assert steer.state == "off" and not steer.needs_facts and not steer.lets(D3)


def test_fold_is_incremental() -> None:
    first = [Logged(stamp(2), (Mark("set", REF, "shasum", D2),)), Logged(stamp(1))]
    book = fold(first)
    book = fold([Logged(stamp(4)), Logged(stamp(3), (Mark("set", REF, "shasum", D3),))], book)
    assert book[REF].latest["shasum"].mark.value == D3
    assert book[REF].written["shasum"].stamp == stamp(3)


def test_holds_policy_key_and_default() -> None:
    assert parse_policy(None, Defaults(holds="until-released")).holds == "until-released"
    assert parse_policy({"holds": "until-new-build"}, Defaults(holds="until-released")).holds == (
        "until-new-build"
    )
    with pytest.raises(ValueError, match=r"watch\.holds: must be one of"):
        parse_policy({"holds": "forever"}, Defaults())
