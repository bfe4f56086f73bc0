"""Property and fuzz tests: bad input gives a clear error or a valid result, never a traceback.

Promise under test: no crash on bad input. The values round-trip property for
generated tags and digests is in tests/test_values.py; here it is extended to
arbitrary surrounding YAML.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from watcher.blocks import Edit
from watcher.config import RegistryConfig, load_text
from watcher.errors import ConfigError, ExtensionError, InvalidReference, RegistryError
from watcher.gitops import values
from watcher.references import ImageName, is_digest, is_tag, parse_reference
from watcher.registry.auth import parse_challenge
from watcher.registry.client import RegistryClient
from watcher.registry.google import facts_from_pages
from watcher.registry.transport import parse_retry_after

FAST = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

_PROBLEM = re.compile(r"^cfg\.yaml:\d+: \S")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["2m", "90s", "5%", "off", "v2", "google", "10000", "*.gcr.io", "1h"]),
)
keys = st.sampled_from(
    ["shards", "interval", "redis", "url", "limits", "gcr", "requests", "per", "headroom",
     "registries", "host", "api", "auth", "limit", "insecure", "git", "branches", "files",
     "author", "name", "email", "defaults", "strategy", "server", "port", "timeout",
     "workdir", "username_env", "password_env", "config", "bogus"]
)  # fmt: skip
trees = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


def _config_ok(text: str) -> None:
    try:
        config = load_text(text, "cfg.yaml", {})
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert _PROBLEM.match(problem), problem
        return
    assert config.shards >= 1 and config.interval > 0 and config.git.url


@pytest.mark.unit
@FAST
@given(tree=trees)
def test_shards_yaml_structures_give_a_config_or_clear_errors(tree: Any) -> None:
    """Promise: no crash on bad input — any shape of shards.yaml."""
    if isinstance(tree, dict):
        tree.setdefault("git", {"url": "file:///x"})
    _config_ok(json.dumps(tree))


@pytest.mark.unit
@FAST
@given(text=st.text(max_size=300))
def test_shards_yaml_any_text_gives_a_config_or_clear_errors(text: str) -> None:
    """Promise: no crash on bad input — any text at all as shards.yaml."""
    _config_ok(text)


@pytest.mark.unit
def test_shards_yaml_nested_too_deep_is_an_error() -> None:
    """Promise: no crash on bad input. Defect found: a deeply nested shards.yaml raised
    RecursionError out of ruamel (a traceback instead of file:line: why)."""
    _config_ok("shards: " + "[" * 700 + "]" * 700 + "\n")
    _config_ok("git: " + "{a: " * 700 + "1" + "}" * 700 + "\n")


# --- values files -------------------------------------------------------------------------


yaml_words = st.sampled_from(
    [
        "image:", "  repository: eu.gcr.io/p/app", "  tag: master", "  shasum: sha256:" + "a" * 64,
        "  overrideTag: x", "  watch: {strategy: newest, tags: '.*'}", "base: &b", "<<: *b",
        "- *b", "  <<: *b", "---", "...", "%YAML 1.1", "a: [1, {tag: t, repository: r}]",
        "k: |", "  text", "x: !!binary aGk=", "? complex", ": value", "tag: off", "'q': \"\\t\"",
        "& bad", "*missing", "{", "]", "\t", "repository: &r x/y", "tag: *r", "- - -",
    ]
)  # fmt: skip


@pytest.mark.unit
@FAST
@given(lines=st.lists(yaml_words | st.text(max_size=15), max_size=25))
def test_values_files_of_any_shape_never_crash(lines: list[str]) -> None:
    """Promise: no crash on bad input — anchors, aliases, merges, several documents,
    syntax errors: blocks or problems with a line, and edits that apply or are refused."""
    text = "\n".join(lines) + "\n"
    blocks, problems = values.find_blocks(text)
    for problem in problems:
        assert problem.line >= 1
    edits = [
        Edit(b.document, b.path, "shasum", b.shasum, "sha256:" + "b" * 64, b.repository, b.tag)
        for b in blocks
    ] + [
        Edit(b.document, b.path, "overrideTag", b.override_tag, "v1", b.repository, b.tag)
        for b in blocks
    ]
    new, results = values.apply_edits(text, edits)
    assert len(results) == len(edits)
    if new != text:
        after, _ = values.find_blocks(new)
        assert len(after) == len(blocks)


@pytest.mark.unit
def test_values_huge_deep_and_binary_inputs() -> None:
    """Promise: no crash on bad input — a file of 2,000 blocks, and deep nesting (a defect:
    RecursionError ended discovery and the daemon). Non-UTF-8 bytes: tests/test_gitops.py."""
    block = "app{n}:\n  image:\n    repository: eu.gcr.io/p/app{n}\n    tag: master\n"
    huge = "".join(block.format(n=n) for n in range(2_000))
    blocks, problems = values.find_blocks(huge)
    assert len(blocks) == 2_000 and problems == []
    for deep in ("a: " + "[" * 700 + "]" * 700, "a: " + "{b: " * 700 + "1" + "}" * 700):
        blocks, problems = values.find_blocks(deep + "\n")
        assert blocks == [] and "nests too deeply" in problems[0].message
        new, results = values.apply_edits(
            deep, [Edit(0, ("a",), "shasum", None, "sha256:" + "c" * 64, "x", "t")]
        )
        assert new == deep and results[0].status == "skipped"


surroundings = st.lists(
    st.sampled_from(
        ["# comment", "other: {a: 1}", "list:\n  - 1\n  - two", "anchor: &z {q: 1}",
         "alias: *z", "long: " + "word " * 30, "quoted: 'it''s'", "empty:", "n: 0x1F"]
    ),
    max_size=5,
)  # fmt: skip


@pytest.mark.unit
@FAST
@given(
    before=surroundings,
    after=surroundings,
    indent=st.sampled_from(["  ", "    "]),
    old=st.none() | st.just("sha256:" + "0" * 64),
    new=st.from_regex(r"[a-f0-9]{64}", fullmatch=True),
    crlf=st.booleans(),
)
def test_update_round_trips_and_changes_no_other_byte(
    before: list[str], after: list[str], indent: str, old: str | None, new: str, crlf: bool
) -> None:
    """Promise: applying an update then reading the file gives the new value and changes no
    other byte (the text outside the spliced value is identical)."""
    # An alias needs its anchor earlier in the file, not merely somewhere in `before`.
    if "alias: *z" in before + after and before[:1] != ["anchor: &z {q: 1}"]:
        before = ["anchor: &z {q: 1}", *before]
    shasum = f"{indent}shasum: {old}\n" if old else ""
    block = f"image:\n{indent}repository: eu.gcr.io/p/app\n{indent}tag: master\n{shasum}"
    text = "\n".join([*before, block.rstrip("\n"), *after]) + "\n"
    if crlf:
        text = text.replace("\n", "\r\n")
    digest = "sha256:" + new
    # An update to the value already there is "already", not a change (tested elsewhere).
    assume(digest != old)
    new_text, results = values.apply_edits(
        text, [Edit(0, ("image",), "shasum", old, digest, "eu.gcr.io/p/app", "master")]
    )
    assert results[0].status == "applied", results[0].reason
    blocks, _ = values.find_blocks(new_text)
    assert [b.shasum for b in blocks if b.path == ("image",)] == [digest]
    if old:
        assert new_text == text.replace(old, digest, 1)
    else:
        eol = "\r\n" if crlf else "\n"
        assert new_text.replace(f"{indent}shasum: {digest}{eol}", "", 1) == text


# --- image references ----------------------------------------------------------------------


@pytest.mark.unit
@FAST
@given(text=st.text(max_size=80) | st.from_regex(r"[a-z0-9.:/_@-]{1,60}", fullmatch=True))
def test_image_references_parse_or_raise_reference_error(text: str) -> None:
    """Promise: no crash on bad input — any `repository` value; a valid one is canonical."""
    try:
        ref = parse_reference(text)
    except InvalidReference:
        return
    again = parse_reference(str(ref.name))
    assert again.name == ref.name
    assert ref.tag is None or is_tag(ref.tag)
    assert ref.digest is None or is_digest(ref.digest)


# --- registry answers -----------------------------------------------------------------------


@pytest.mark.unit
@FAST
@given(header=st.text(max_size=120) | st.from_regex(r'(Bearer|Basic) ([a-z]+="[^"]*",?){0,3}'))
def test_www_authenticate_headers_parse_or_give_none(header: str) -> None:
    """Promise: no crash on bad input — any WWW-Authenticate value."""
    challenge = parse_challenge(header)
    assert challenge is None or challenge.scheme == challenge.scheme.lower()


@pytest.mark.unit
@FAST
@given(value=st.text(max_size=40))
def test_retry_after_parses_or_gives_none(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or seconds >= 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.sampled_from(["application/vnd.oci.image.manifest.v1+json", "x/y"])
        | json_values,
        "tag": st.lists(st.text(max_size=12) | st.sampled_from(["master", "v1", "a\nb: c"]))
        | json_values,
        "timeUploadedMs": st.integers() | st.text(max_size=14) | json_values,
        "timeCreatedMs": st.integers(0, 2**45).map(str),
    },
)
google_pages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "tags": st.lists(st.text(max_size=10)) | json_values,
            "manifest": st.dictionaries(
                st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True) | st.text(max_size=10),
                entries | json_values,
                max_size=4,
            )
            | json_values,
        },
    ),
    max_size=3,
)


@pytest.mark.unit
@FAST
@given(pages=google_pages)
def test_google_extension_pages_give_facts_or_extension_error(pages: list[dict[str, Any]]) -> None:
    """Promise: no crash on bad input; a registry cannot inject YAML or a newline: every tag
    and digest in the facts obeys the OCI grammar."""
    try:
        facts, _ = facts_from_pages(pages)
    except ExtensionError:
        return
    assert all(is_tag(tag) and is_digest(digest) for tag, digest in facts.tags.items())
    assert all(is_tag(tag) for tag in facts.listed or ())


@pytest.mark.integration
@settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from([200, 200, 200, 201, 204, 301, 400, 404, 500]),
    body=st.binary(max_size=60)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.lists(st.text(max_size=8)).map(lambda t: json.dumps({"tags": t}).encode()),
    link=st.none()
    | st.text(max_size=60)
    | st.sampled_from(
        [
            '</v2/p/a/tags/list?n=1&last=a>; rel="next"',
            '<http://evil.example/x>; rel="next"',
            '<>; rel="next"',
            '<//x:99999/y>; rel="next"',
            "<\x7f>; rel=next",
            '<a>; rel="next", <b',
        ],
    ),
    challenge=st.none() | st.text(max_size=60),
)
def test_registry_answers_give_tags_or_a_registry_error(
    status: int, body: bytes, link: str | None, challenge: str | None
) -> None:
    """Promise: no crash on bad input — any status, body, Link and WWW-Authenticate from a
    real HTTP server: the client returns tags or raises RegistryError, nothing else."""

    async def run() -> None:
        async def handler(request: web.Request) -> web.Response:
            headers = {}
            if link is not None:
                headers["Link"] = link.replace("\n", " ").replace("\r", " ")
            if challenge is not None and status != 200:
                headers["WWW-Authenticate"] = challenge.replace("\n", " ").replace("\r", " ")
            return web.Response(status=status, body=body, headers=headers)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        host = f"127.0.0.1:{port}"

        async def acquire() -> None:
            return None

        try:
            async with aiohttp.ClientSession() as session:
                client = RegistryClient(
                    session,
                    RegistryConfig(host=host, insecure=True, timeout=2.0),
                    host,
                    None,
                    acquire,
                    retries=0,
                )
                try:
                    tags = await client.tags(ImageName(host, "p/a"))
                except RegistryError:
                    return
                assert all(isinstance(t, str) for t in tags)
        finally:
            await runner.cleanup()

    asyncio.run(run())
