"""values.py: finding image blocks, and byte-exact edits of values files."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.blocks import Edit, Field, KeyPath
from watcher.gitops.values import BlockProblem, apply_edits, find_blocks, plain_is_safe

pytestmark = pytest.mark.unit

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "a" * 64


def edit(
    path: KeyPath,
    field: Field,
    old: str | None,
    new: str,
    repository: str = "eu.gcr.io/p/app",
    tag: str | None = "master",
    document: int = 0,
) -> Edit:
    return Edit(document, path, field, old, new, repository, tag)


def applied(text: str, *edits: Edit) -> str:
    out, results = apply_edits(text, edits)
    assert [r.status for r in results] == ["applied"] * len(edits), results
    return out


def skipped(text: str, *edits: Edit) -> list[str]:
    out, results = apply_edits(text, edits)
    assert out == text
    assert all(r.status == "skipped" for r in results), results
    return [r.reason for r in results]


# --- discovery -----------------------------------------------------------------------------


def test_nested_blocks_sequences_and_flow_mappings() -> None:
    text = (
        "global:\n"
        "  image:\n"
        "    repository: eu.gcr.io/p/app\n"
        "    tag: master\n"
        "    shasum: sha256:" + "1" * 64 + "\n"
        "jobs:\n"
        "  - name: a\n"
        "    image: {repository: nginx, tag: '1.25', overrideTag: ''}\n"
        "  - - repository: redis\n"
        '      tag: "7"\n'
        "      overrideTag: 7.2-alpine\n"
        "notimage: {repository: 1, tag: x}\n"
        "alsonot: {repository: x}\n"
    )
    blocks, problems = find_blocks(text)
    assert problems == []
    assert [(b.path, b.line, b.repository, b.tag, b.shasum, b.override_tag) for b in blocks] == [
        (("global", "image"), 3, "eu.gcr.io/p/app", "master", D1, None),
        (("jobs", 0, "image"), 8, "nginx", "1.25", None, None),
        (("jobs", 1, 0), 9, "redis", "7", None, "7.2-alpine"),
    ]
    assert all(b.document == 0 and b.watch is None for b in blocks)


def test_root_mapping_is_a_block_with_empty_path() -> None:
    blocks, _ = find_blocks("repository: a\ntag: b\n")
    assert [(b.path, b.line) for b in blocks] == [((), 1)]


def test_watch_is_plain_data_and_unquoted_off_is_false() -> None:
    text = (
        "app:\n"
        "  repository: a\n"
        "  tag: b\n"
        "  watch:\n"
        "    strategy: off\n"
        "    tags: '^v[0-9]+$'\n"
        '    ignore: ["*-rc*", x]\n'
        "    n: 3\n"
        "    semver: ~1.4\n"
    )
    (block,), _ = find_blocks(text)
    assert block.watch == {
        "strategy": False,
        "tags": "^v[0-9]+$",
        "ignore": ["*-rc*", "x"],
        # `n` is a boolean key under YAML 1.1, as Helm reads it.
        False: 3,
        "semver": "~1.4",
    }
    assert type(block.watch) is dict and type(block.watch["ignore"]) is list


def test_multi_document_files() -> None:
    text = "repository: a\ntag: b\n---\n# second\n---\nx:\n  repository: c\n  tag: d\n"
    blocks, problems = find_blocks(text)
    assert problems == []
    assert [(b.document, b.path, b.line) for b in blocks] == [(0, (), 1), (2, ("x",), 7)]


def test_anchors_and_aliases_report_a_block_once_at_its_first_path() -> None:
    text = (
        "defaults: &img\n"
        "  repository: a\n"
        "  tag: b\n"
        "one:\n"
        "  image: *img\n"
        "list: [*img, *img]\n"
        "merged:\n"
        "  <<: *img\n"
        "  tag: c\n"
    )
    blocks, problems = find_blocks(text)
    assert problems == []
    assert [(b.path, b.line, b.repository, b.tag) for b in blocks] == [
        (("defaults",), 2, "a", "b"),
        # a `<<` merge makes a mapping of its own, with the merged keys.
        (("merged",), 8, "a", "c"),
    ]


def test_int_tag_reads_as_string_and_float_or_bool_tag_is_a_problem() -> None:
    text = (
        "a: {repository: x, tag: 7}\n"
        "b:\n"
        "  repository: yy\n"
        "  tag: 1.10\n"
        "c: {repository: z, tag: true}\n"
        "d: {repository: w, tag: }\n"
    )
    blocks, problems = find_blocks(text)
    assert [(b.path, b.tag) for b in blocks] == [(("a",), "7")]
    # An empty tag is the chart's default (its appVersion): not a block, and no problem.
    assert [p.line for p in problems] == [4, 5]
    assert all("tag must be a string; quote it" in p.message for p in problems)


def test_empty_and_null_fields_read_as_none() -> None:
    text = (
        "a:\n  repository: x\n  tag: z\n  shasum:\n  overrideTag: ''\n"
        "b: {repository: x, tag: z, shasum: ~, overrideTag: null}\n"
    )
    blocks, _ = find_blocks(text)
    assert [(b.shasum, b.override_tag) for b in blocks] == [(None, None), (None, None)]


def test_syntax_error_gives_no_blocks_and_its_line() -> None:
    text = "a:\n  repository: x\n  tag: y\nb: [1, 2\nc: 3\n"
    blocks, problems = find_blocks(text)
    assert blocks == []
    assert len(problems) == 1
    assert problems[0].line in (4, 5)
    assert problems[0].message.startswith("YAML syntax error")


def test_non_string_keys_are_ignored() -> None:
    blocks, problems = find_blocks("1: {repository: a, tag: b}\n? [x]\n: {repository: c, tag: d}\n")
    assert blocks == [] and problems == []


def test_large_file_is_linear() -> None:
    one = "app{i}:\n  image:\n    repository: eu.gcr.io/p/app{i}\n    tag: master\n"
    small = "".join(one.format(i=i) for i in range(200))
    big = "".join(one.format(i=i) for i in range(2000))
    started = time.perf_counter()
    assert len(find_blocks(small)[0]) == 200
    t_small = time.perf_counter() - started
    started = time.perf_counter()
    assert len(find_blocks(big)[0]) == 2000
    t_big = time.perf_counter() - started
    assert t_big < t_small * 30  # 10x the input: quadratic would be ~100x


def test_alias_bomb_costs_its_text_size() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    lines.append("img: {repository: r, tag: t}")
    started = time.perf_counter()
    blocks, _ = find_blocks("\n".join(lines) + "\n")
    assert [b.path for b in blocks] == [("img",)]
    assert time.perf_counter() - started < 5


# --- edits: exact text -----------------------------------------------------------------


BASE = (
    "# app values\n"
    "image:\n"
    "  repository: eu.gcr.io/p/app  # the image\n"
    "  tag: master # follow master\n"
    "  shasum: {shasum}\n"
    "  pullPolicy: IfNotPresent\n"
)


def test_plain_value_is_replaced_in_place() -> None:
    text = BASE.format(shasum=D1)
    out = applied(text, edit(("image",), "shasum", D1, D2))
    assert out == BASE.format(shasum=D2)


def test_double_quoted_value_stays_double_quoted() -> None:
    text = BASE.format(shasum=f'"{D1}"  # pinned by ci')
    out = applied(text, edit(("image",), "shasum", D1, D2))
    assert out == BASE.format(shasum=f'"{D2}"  # pinned by ci')


def test_single_quoted_value_stays_single_quoted() -> None:
    text = BASE.format(shasum=f"'{D1}'")
    out = applied(text, edit(("image",), "shasum", D1, D2))
    assert out == BASE.format(shasum=f"'{D2}'")


def test_empty_null_value_is_written_after_the_colon() -> None:
    text = BASE.format(shasum="").replace("shasum: \n", "shasum:\n")
    out = applied(text, edit(("image",), "shasum", None, D2))
    assert out == BASE.format(shasum=D2)


def test_empty_null_value_with_a_comment() -> None:
    text = "img:\n  repository: r\n  tag: t\n  overrideTag:   # pin here\n  x: 1\n"
    out = applied(text, edit(("img",), "overrideTag", None, "v2", "r", "t"))
    assert out == "img:\n  repository: r\n  tag: t\n  overrideTag: v2   # pin here\n  x: 1\n"


def test_tilde_null_and_empty_string_are_replaced() -> None:
    text = "img:\n  repository: r\n  tag: t\n  shasum: ~\n  overrideTag: ''\n"
    out = applied(
        text,
        edit(("img",), "shasum", None, D1, "r", "t"),
        edit(("img",), "overrideTag", None, "v2", "r", "t"),
    )
    # overrideTag wins in the chart; both are written here only to check the splicing.
    assert out == f"img:\n  repository: r\n  tag: t\n  shasum: {D1}\n  overrideTag: 'v2'\n"


def test_absent_key_is_inserted_after_the_tag_line_with_its_indent() -> None:
    text = (
        "apps:\n"
        "  - name: web\n"
        "    image:\n"
        "      repository: eu.gcr.io/p/app\n"
        "      tag: master   # follow\n"
        "      pullPolicy: Always\n"
        "  - name: other\n"
    )
    out = applied(text, edit(("apps", 0, "image"), "shasum", None, D1))
    assert out == (
        "apps:\n"
        "  - name: web\n"
        "    image:\n"
        "      repository: eu.gcr.io/p/app\n"
        "      tag: master   # follow\n"
        f"      shasum: {D1}\n"
        "      pullPolicy: Always\n"
        "  - name: other\n"
    )


def test_absent_key_in_a_sequence_item_starting_with_tag() -> None:
    text = "- tag: master\n  repository: r\n- x\n"
    out = applied(text, edit((0,), "overrideTag", None, "v1", "r", "master"))
    assert out == "- tag: master\n  overrideTag: v1\n  repository: r\n- x\n"


def test_absent_key_follows_the_quoting_of_tag() -> None:
    text = 'img:\n  repository: r\n  tag: "master"\n'
    out = applied(text, edit(("img",), "shasum", None, D1, "r"))
    assert out == f'img:\n  repository: r\n  tag: "master"\n  shasum: "{D1}"\n'


def test_absent_key_in_a_file_without_final_newline() -> None:
    text = "img:\n  repository: r\n  tag: master # last"
    out = applied(text, edit(("img",), "shasum", None, D1, "r"))
    assert out == f"img:\n  repository: r\n  tag: master # last\n  shasum: {D1}"


def test_absent_key_in_a_flow_mapping() -> None:
    text = "a:\n  image: {repository: r, tag: master}  # flow\n  b: 1\n"
    out = applied(
        text,
        edit(("a", "image"), "overrideTag", None, "v1.2", "r"),
        edit(("a", "image"), "shasum", None, D1, "r"),
    )
    assert out == (
        "a:\n"
        f'  image: {{repository: r, tag: master, overrideTag: v1.2, shasum: "{D1}"}}  # flow\n'
        "  b: 1\n"
    )


def test_absent_key_in_a_flow_mapping_with_trailing_comma_and_lines() -> None:
    text = "img: {\n  repository: r,\n  tag: master,\n}\n"
    out = applied(text, edit(("img",), "overrideTag", None, "v1", "r"))
    assert out == "img: {\n  repository: r,\n  tag: master, overrideTag: v1\n}\n"


def test_empty_null_in_a_flow_mapping_and_non_ascii_text() -> None:
    text = (
        "# Ümlaut 🚀 comment\n"
        "img: {repository: r, tag: t, overrideTag: }  # 🚀\n"
        "b:\n  repository: r # ü🚀\n  tag: t\n  overrideTag: v0\n"
    )
    out = applied(
        text,
        edit(("img",), "overrideTag", None, "v1", "r", "t"),
        edit(("b",), "overrideTag", "v0", "v1", "r", "t"),
    )
    assert out == (
        "# Ümlaut 🚀 comment\n"
        "img: {repository: r, tag: t, overrideTag: v1 }  # 🚀\n"
        "b:\n  repository: r # ü🚀\n  tag: t\n  overrideTag: v1\n"
    )


def test_byte_order_mark_is_kept() -> None:
    text = "\ufeffimg:\n  repository: r\n  tag: t\n"
    out = applied(text, edit(("img",), "overrideTag", None, "v1", "r", "t"))
    assert out == "\ufeffimg:\n  repository: r\n  tag: t\n  overrideTag: v1\n"


def test_crlf_line_endings_are_kept() -> None:
    text = "img:\r\n  repository: r\r\n  tag: master\r\n  overrideTag: v1\r\nnext: 1\r\n"
    out = applied(
        text,
        edit(("img",), "overrideTag", "v1", "v2", "r"),
    )
    assert out == "img:\r\n  repository: r\r\n  tag: master\r\n  overrideTag: v2\r\nnext: 1\r\n"
    text = "img:\r\n  repository: r\r\n  tag: master\r\nnext: 1\r\n"
    out = applied(text, edit(("img",), "shasum", None, D1, "r"))
    assert out == f"img:\r\n  repository: r\r\n  tag: master\r\n  shasum: {D1}\r\nnext: 1\r\n"


def test_tags_that_would_not_read_back_as_strings_get_double_quotes() -> None:
    text = "img:\n  repository: r\n  tag: master\n  overrideTag: v1\n"
    for tag in ("1.10", "true", "0123", "off", "1e3", "2024-01-02", "y", "1_000"):
        out = applied(text, edit(("img",), "overrideTag", "v1", tag, "r"))
        assert out == f'img:\n  repository: r\n  tag: master\n  overrideTag: "{tag}"\n'
        (block,), _ = find_blocks(out)
        assert block.override_tag == tag
    # Strings that every reader takes as strings stay plain.
    for tag in ("1.4.2", "v1.10", "9d239fd", "fixes_TECH-2783_bump-9d239fd"):
        out = applied(text, edit(("img",), "overrideTag", "v1", tag, "r"))
        assert out == f"img:\n  repository: r\n  tag: master\n  overrideTag: {tag}\n"


def test_plain_is_safe() -> None:
    assert plain_is_safe("master") and plain_is_safe(D1)
    assert not plain_is_safe(D1, flow=True)
    assert not plain_is_safe("1.10") and not plain_is_safe("NULL") and not plain_is_safe("")


def test_several_edits_in_one_pass_and_multi_document() -> None:
    text = (
        "a: {repository: r, tag: t, shasum: " + D1 + "}\n"
        "---\n"
        "b:\n  repository: r\n  tag: t\n"
        "c:\n  repository: r\n  tag: t\n  shasum: " + D1 + "\n"
    )
    out = applied(
        text,
        edit(("c",), "shasum", D1, D3, "r", "t", document=1),
        edit(("a",), "shasum", D1, D2, "r", "t"),
        edit(("b",), "shasum", None, D3, "r", "t", document=1),
    )
    assert out == (
        "a: {repository: r, tag: t, shasum: " + D2 + "}\n"
        "---\n"
        "b:\n  repository: r\n  tag: t\n  shasum: " + D3 + "\n"
        "c:\n  repository: r\n  tag: t\n  shasum: " + D3 + "\n"
    )


# --- edits: the person wins --------------------------------------------------------------


def test_old_value_mismatch_is_skipped() -> None:
    text = BASE.format(shasum=D3)
    (reason,) = skipped(text, edit(("image",), "shasum", D1, D2))
    assert "changed by a person" in reason


def test_repository_or_tag_changed_is_skipped() -> None:
    text = BASE.format(shasum=D1)
    reasons = skipped(
        text,
        edit(("image",), "shasum", D1, D2, repository="eu.gcr.io/p/other"),
        edit(("image",), "shasum", D1, D2, tag="staging"),
        edit(("gone",), "shasum", D1, D2),
    )
    assert "repository changed" in reasons[0]
    assert "tag changed" in reasons[1]
    assert "no image block" in reasons[2]


def test_override_tag_pin_blocks_digest_updates() -> None:
    text = BASE.format(shasum=D1) + "  overrideTag: hotfix-1\n"
    (reason,) = skipped(text, edit(("image",), "shasum", D1, D2))
    assert "pinned by overrideTag hotfix-1" in reason


def test_already_holding_the_new_value() -> None:
    text = BASE.format(shasum=D2)
    out, (result,) = apply_edits(text, [edit(("image",), "shasum", D1, D2)])
    assert out == text and result.status == "already"


def test_anchored_or_aliased_value_is_refused() -> None:
    text = (
        f"d: &digest {D1}\n"
        "a:\n  repository: r\n  tag: t\n  shasum: *digest\n"
        "b:\n  repository: r\n  tag: u\n  shasum: &own " + D1 + "\n"
    )
    reasons = skipped(
        text,
        edit(("a",), "shasum", D1, D2, "r", "t"),
        edit(("b",), "shasum", D1, D2, "r", "u"),
    )
    assert all("anchor" in reason for reason in reasons)


def test_block_merged_elsewhere_is_refused_and_inherited_values_too() -> None:
    text = (
        "base: &base\n  repository: r\n  tag: t\n  shasum: " + D1 + "\n"
        "app:\n  <<: *base\n  tag: u\n"
    )
    reasons = skipped(
        text,
        edit(("base",), "shasum", D1, D2, "r", "t"),
        edit(("app",), "shasum", D1, D2, "r", "u"),
    )
    assert "merged" in reasons[0]
    assert "inherited" in reasons[1]


def test_absent_key_inserted_into_a_merging_block_stays_local() -> None:
    text = "base: &base {repository: r}\napp:\n  <<: *base\n  tag: u\nnext: 1\n"
    out = applied(text, edit(("app",), "shasum", None, D1, "r", "u"))
    assert out == (
        "base: &base {repository: r}\napp:\n  <<: *base\n  tag: u\n  shasum: " + D1 + "\nnext: 1\n"
    )


def test_invalid_values_are_refused() -> None:
    text = BASE.format(shasum=D1)
    reasons = skipped(
        text,
        edit(("image",), "shasum", D1, "sha256:XYZ"),
        edit(("image",), "overrideTag", None, "-bad"),
        edit(("image",), "overrideTag", None, "a b"),
    )
    assert all("refusing to write" in reason for reason in reasons)


def test_unparsable_file_skips_everything() -> None:
    text = "img: [\n"
    (reason,) = skipped(text, edit(("img",), "shasum", None, D1, "r", "t"))
    assert reason.startswith("file does not parse: line")


def test_block_scalar_is_not_rewritten() -> None:
    text = "img:\n  repository: r\n  tag: t\n  overrideTag: |\n    v1\n"
    blocks, _ = find_blocks(text)
    (reason,) = skipped(text, edit(("img",), "overrideTag", blocks[0].override_tag, "v2", "r", "t"))
    assert "block scalar" in reason


def test_problem_type() -> None:
    assert BlockProblem(3, "x") == BlockProblem(3, "x")


# --- property: edit then read --------------------------------------------------------------

TAG_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
tags = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(TAG_ALPHABET + "_"),
    st.text(TAG_ALPHABET + "._-", max_size=40),
)
digests = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h)
styles = st.sampled_from(["plain", "single", "double", "absent", "empty", "flow"])


def _layout(style: str, value: str | None) -> str:
    """A values file whose `img` block holds ``value`` (already quoted as it should be)."""
    head = "# header: keep me\nother:\n  repository: o\n  tag: t\n"
    if style == "flow":
        pin = "" if value is None else f", overrideTag: {value}"
        return f"{head}img: {{repository: r, tag: t{pin}}}  # x\ntail: [1, 2]\n"
    if value is None:
        line = "" if style == "absent" else "  overrideTag:\n"
    elif style in ("absent", "empty"):
        line = f"  overrideTag: {value}\n"
    else:
        line = f"  overrideTag: {value}  # c\n"
    return f"{head}img:\n  repository: r\n  tag: t\n{line}  pull: Always\ntail: [1, 2]\n"


def _quoted(style: str, value: str) -> str:
    if style == "single":
        return f"'{value}'"
    if style == "double" or not plain_is_safe(value):
        return f'"{value}"'
    return value


@settings(max_examples=300, deadline=None)
@given(new=tags, style=styles)
def test_property_tag_edit_reads_back_and_keeps_other_bytes(new: str, style: str) -> None:
    old = "v0"
    before = None if style in ("absent", "empty") else _quoted(style, old)
    if style == "flow":
        before = old
    text = _layout(style, before)
    blocks = {b.path: b for b in find_blocks(text)[0]}
    current = blocks[("img",)].override_tag
    out, (result,) = apply_edits(text, [edit(("img",), "overrideTag", current, new, "r", "t")])
    if new == current:
        assert result.status == "already" and out == text
        return
    assert result.status == "applied", result
    # The whole file is the original with only the value changed (or its line added).
    assert out == _layout(style, _quoted(style, new))
    after = {b.path: b for b in find_blocks(out)[0]}
    assert after[("img",)].override_tag == new
    assert after[("other",)] == blocks[("other",)]


@settings(max_examples=100, deadline=None)
@given(old=digests, new=digests, quoted=st.booleans())
def test_property_digest_edit_reads_back(old: str, new: str, quoted: bool) -> None:
    shown = f'"{old}"' if quoted else old
    text = f"x: 1\nimg:\n  repository: r\n  tag: t\n  shasum: {shown}\ny: 2\n"
    out, (result,) = apply_edits(text, [edit(("img",), "shasum", old, new, "r", "t")])
    if old == new:
        assert result.status == "already"
        return
    expected_value = f'"{new}"' if quoted else new
    assert out == text.replace(shown, expected_value)
    (block,) = find_blocks(out)[0]
    assert block.shasum == new
