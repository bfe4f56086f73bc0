"""``BLOCK`` selectors: each form, and every way one can fail (listing the candidates)."""

from __future__ import annotations

import pytest

from watcher.errors import UsageError
from watcher.steer.selectors import Candidate, resolve

pytestmark = pytest.mark.unit

BRANCH = "environment/b2c1"
API = Candidate("apps/api/values.yaml#image", "apps/api/values.yaml", "eu.gcr.io/p/team/api")
WORKER = Candidate(
    "apps/api/values.yaml#worker.image", "apps/api/values.yaml", "eu.gcr.io/p/team/api-worker"
)
WEB = Candidate("apps/web/values.yaml#image", "apps/web/values.yaml", "eu.gcr.io/p/team/web")
SIDE = Candidate(
    "apps/web/values.yaml#sidecars[0].image", "apps/web/values.yaml", "docker.io/library/nginx"
)
NGINX2 = Candidate("apps/proxy/values.yaml#image", "apps/proxy/values.yaml", "eu.gcr.io/x/nginx")
ALL = [API, WORKER, WEB, SIDE]


@pytest.mark.parametrize(
    "selector,expected",
    [
        ("apps/api/values.yaml#worker.image", WORKER),
        ("apps/web/values.yaml#sidecars[0].image", SIDE),
        ("eu.gcr.io/p/team/web", WEB),
        ("team/api-worker", WORKER),
        ("api", API),  # a last segment: api-worker does not end in /api
        ("nginx", SIDE),  # the short Docker Hub name, canonical or as a segment
        ("docker.io/library/nginx", SIDE),
    ],
)
def test_each_form_names_one_block(selector: str, expected: Candidate) -> None:
    assert resolve(selector, BRANCH, ALL) == expected


def test_a_file_with_one_block_is_that_block() -> None:
    assert resolve("apps/proxy/values.yaml", BRANCH, [*ALL, NGINX2]) == NGINX2


def test_a_file_with_several_blocks_is_ambiguous_listing_them() -> None:
    with pytest.raises(UsageError) as caught:
        resolve("apps/web/values.yaml", BRANCH, ALL)
    text = str(caught.value)
    assert "matches 2 blocks on environment/b2c1" in text
    assert "apps/web/values.yaml#image" in text and "apps/web/values.yaml#sidecars[0].image" in text
    assert "apps/api" not in text


def test_an_image_used_twice_is_ambiguous() -> None:
    with pytest.raises(UsageError) as caught:
        resolve("nginx", BRANCH, [*ALL, NGINX2])
    assert "matches 2 blocks" in str(caught.value)
    lines = [line.split() for line in str(caught.value).splitlines()[1:]]
    assert lines == [[SIDE.ref, SIDE.image], [NGINX2.ref, NGINX2.image]]


def test_an_unknown_key_path_in_a_known_file_lists_that_files_blocks() -> None:
    with pytest.raises(UsageError) as caught:
        resolve("apps/api/values.yaml#nope", BRANCH, ALL)
    text = str(caught.value)
    assert "no block on environment/b2c1 matches 'apps/api/values.yaml#nope'" in text
    assert "the blocks in apps/api/values.yaml" in text
    assert WORKER.ref in text and WEB.ref not in text


def test_an_unknown_selector_lists_every_block() -> None:
    with pytest.raises(UsageError) as caught:
        resolve("billing", BRANCH, ALL)
    text = str(caught.value)
    assert all(c.ref in text for c in ALL)
    # A part of a segment is not a segment.
    with pytest.raises(UsageError):
        resolve("pi", BRANCH, ALL)


def test_a_branch_without_blocks_says_so() -> None:
    with pytest.raises(UsageError, match="has no image blocks"):
        resolve("api", BRANCH, [])


def test_a_long_candidate_list_is_cut_and_says_how_many_more() -> None:
    many = [
        Candidate(f"apps/a{i}/values.yaml#image", f"apps/a{i}/values.yaml", "x/y")
        for i in range(70)
    ]
    with pytest.raises(UsageError) as caught:
        resolve("zzz", BRANCH, many)
    assert "... and 20 more" in str(caught.value)
