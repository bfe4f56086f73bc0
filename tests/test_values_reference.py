"""libyaml against ruamel.yaml: the fast composer finds the same blocks at the same marks.

ruamel.yaml (YAML 1.1, round-trip) is the reference; the product composes with
libyaml. On generated files and on the real YAML files of this repository both
must give the same blocks, problems and marks, and the same edits byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml.nodes import Node, ScalarNode

from watcher.blocks import Edit
from watcher.config.settings import Keys
from watcher.gitops.values import DEFAULT_READING, Reading, apply_edits, find_blocks
from watcher.gitops.values.compose import ComposeError, compose, compose_reference
from watcher.gitops.values.read import Scan, scan_text

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def _mark(node: Node) -> tuple[int, int, int, int]:
    start, end = node.start_mark.index, node.end_mark.index
    if isinstance(node, ScalarNode) and start == end:
        # An empty value: libyaml marks it just after its colon, ruamel at the next
        # token; edits write after the colon either way.
        return (-1, -1, -1, -1)
    return (start, end, node.start_mark.line, node.start_mark.column)


def _shape(scan: Scan) -> list[Any]:
    """What a scan found, with the marks every edit works from."""
    out: list[Any] = []
    for found in scan.blocks:
        entries = {
            role: (
                entry.inherited,
                _mark(entry.key),
                _mark(entry.value),
                getattr(entry.value, "style", None) or None,
                entry.value.tag,
            )
            for role, entry in found.entries.items()
        }
        node = found.node
        out.append(
            (found.raw, entries, _mark(node), bool(node.flow_style), found.digest_key, found.hex)
        )
    out.append(sorted((p.line, p.message) for p in scan.problems))
    return out


def same_reading(
    text: str, *, syntax_may_differ: bool = False, reading: Reading = DEFAULT_READING
) -> None:
    try:
        fast: Any = _shape(scan_text(text, compose, reading))
    except ComposeError:
        fast = "does not parse"
    try:
        reference: Any = _shape(scan_text(text, compose_reference, reading))
    except ComposeError:
        reference = "does not parse"
    if syntax_may_differ and "does not parse" in (fast, reference):
        # Two parsers disagree on some malformed text (libyaml, like go-yaml, takes a
        # line of tabs that ruamel refuses); what both read, they must read alike.
        return
    assert fast == reference
    assert (
        find_blocks(text, compose, reading)[0] == find_blocks(text, compose_reference, reading)[0]
    )


def same_edits(text: str, reading: Reading = DEFAULT_READING) -> None:
    blocks, _ = find_blocks(text, compose_reference, reading)
    edits = [
        Edit(b.document, b.path, "shasum", b.shasum, "sha256:" + "b" * 64, b.repository, b.tag)
        for b in blocks
    ] + [
        Edit(b.document, b.path, "overrideTag", b.override_tag, "v1.2", b.repository, b.tag)
        for b in blocks
    ]
    for edit in edits:  # one at a time, then all together
        fast = apply_edits(text, [edit], compose, reading)
        assert fast == apply_edits(text, [edit], compose_reference, reading)
    fast = apply_edits(text, edits, compose, reading)
    assert fast == apply_edits(text, edits, compose_reference, reading)


# --- generated files -------------------------------------------------------------------------

SCALARS = [
    "master", "'1.25'", '"7"', "7", "1.10", "off", "n", "y", "~", "null", "", "0x1F", "010",
    "1e3", "2001-12-14", "1:20", "sha256:" + "1" * 64, '"sha256:' + "2" * 64 + '"',
    "eu.gcr.io/p/app", "nginx", "'it''s'", '"tab\\there"', "é-ünï", "a:b", "=", "<<",
    "!!str 3", "&anc v", "*anc", "|\n  text", ">-\n  folded", ".inf", "-.5", "+12",
]  # fmt: skip
KEYS = [
    "repository", "tag", "shasum", "overrideTag", "image", "name", "watch", "pullPolicy",
    "registry", "digest", "sha", "imageRegistry",
]  # fmt: skip
# ingress-nginx's {registry, image, tag, digest}; `global.imageRegistry` from any mapping
# named so at the root (the generator writes `imageRegistry` at any depth).
IMAGE_READING = Reading(
    Keys(repository=("repository", "image"), registry_override=("imageRegistry",)), ()
)


@st.composite
def mapping_lines(draw: st.DrawFn, indent: int, depth: int) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for _ in range(draw(st.integers(1, 5))):
        key = draw(st.sampled_from(KEYS))
        kind = draw(st.sampled_from(["scalar", "scalar", "map", "flow", "seq", "comment"]))
        if kind == "comment":
            lines.append(f"{pad}# {draw(st.sampled_from(['note', 'tag: x', 'é']))}")
        elif kind == "scalar" or depth > 2:
            value = draw(st.sampled_from(SCALARS))
            if value.startswith(("|", ">")):
                value = value.replace("\n  ", "\n" + pad + "  ")
            lines.append(f"{pad}{key}: {value}".rstrip(" "))
        elif kind == "flow":
            pairs = draw(st.lists(st.sampled_from(KEYS), max_size=4))
            values = [draw(st.sampled_from(SCALARS[:20])) for _ in pairs]
            inner = ", ".join(f"{k}: {v}" for k, v in zip(pairs, values, strict=True))
            lines.append(f"{pad}{key}: {{{inner}}}")
        elif kind == "seq":
            lines.append(f"{pad}{key}:")
            for _ in range(draw(st.integers(1, 2))):
                item = draw(mapping_lines(indent + 4, depth + 1))
                lines.append(f"{pad}  - {item[0].lstrip()}")
                lines.extend(item[1:])
        else:
            anchor = draw(st.sampled_from(["", " &base", " &img"]))
            lines.append(f"{pad}{key}:{anchor}")
            if draw(st.booleans()):
                lines.append(f"{pad}  <<: {draw(st.sampled_from(['*base', '*img', '[*base]']))}")
            lines.extend(draw(mapping_lines(indent + 2, depth + 1)))
    return lines


@st.composite
def values_files(draw: st.DrawFn) -> str:
    documents = ["\n".join(draw(mapping_lines(0, 0))) for _ in range(draw(st.integers(1, 2)))]
    text = "\n---\n".join(documents) + "\n"
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    return text


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(text=values_files())
def test_generated_files_read_the_same(text: str) -> None:
    same_reading(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=values_files())
def test_generated_files_edit_the_same(text: str) -> None:
    same_edits(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=values_files())
def test_generated_files_read_and_edit_the_same_with_other_key_names(text: str) -> None:
    same_reading(text, reading=IMAGE_READING)
    same_edits(text, IMAGE_READING)


@SETTINGS
@given(lines=st.lists(st.sampled_from([*SCALARS, *KEYS, ":", "- ", "  ", "{", "}", "[", "]",
                                       "? x", "---", "...", "%YAML 1.1", "\t", "#"]),
                      max_size=30))  # fmt: skip
def test_any_text_reads_the_same(lines: list[str]) -> None:
    """Broken text included: what both composers read, they read alike."""
    same_reading("\n".join(lines) + "\n", syntax_may_differ=True)


# --- real files ------------------------------------------------------------------------------

PATTERNS = ("shards.yaml", "helm/*.yaml", "helm/rules/*.yaml", "tests/alerts/*.yaml")
REAL = sorted(path for pattern in PATTERNS for path in ROOT.glob(pattern))
CHART_VALUES = """\
## A chart's values as charts write them
global:
  imageRegistry: ""
  imagePullSecrets: []
image:
  registry: docker.io
  repository: bitnami/nginx
  tag: 1.25.3-debian-11-r1
  digest: ""
  pullPolicy: IfNotPresent
  debug: false
containerPorts: {http: 8080, https: 8443}
sidecars: []
initContainers:
  - name: wait
    image:
      repository: busybox
      tag: "1.36"
metrics:
  enabled: off
  image: &exporter
    registry: docker.io
    repository: bitnami/nginx-exporter
    tag: 0.11.0-debian-11-r2
    shasum: sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
  exporters:
    - <<: *exporter
      tag: 0.12.0
resources:
  limits: {cpu: 250m, memory: 256Mi}
podAnnotations:
  prometheus.io/port: "9113"
"""


def test_real_files_read_and_edit_the_same() -> None:
    assert REAL, "no YAML files found in the repository"
    texts = [path.read_text() for path in REAL] + [CHART_VALUES]
    for text in texts:
        same_reading(text)
        same_edits(text)
        same_reading(text.replace("\n", "\r\n"))
    assert len(find_blocks(CHART_VALUES)[0]) == 4
