"""The image conventions of public charts: registries, digest keys, the chart's default.

Pure: which mappings are blocks, which image each pulls, where its digest goes and
in which form, and what ``git.keys`` changes. Each case is read by both composers.
"""

from __future__ import annotations

import pytest

from watcher.blocks import Edit, Field, RawBlock
from watcher.config import load_text
from watcher.config.settings import Keys
from watcher.errors import ConfigError
from watcher.gitops.values import DEFAULT_READING, Reading, apply_edits, find_blocks
from watcher.gitops.values.compose import compose_reference

pytestmark = pytest.mark.unit

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
HEX2 = "2" * 64
IMAGE = Reading(
    Keys(
        repository=("repository", "image"),
        digest=("digest",),
        registry_fallback=("global.image.registry",),
    ),
    (),
)


def read(text: str, reading: Reading = DEFAULT_READING) -> list[RawBlock]:
    blocks, problems = find_blocks(text, reading=reading)
    assert problems == []
    assert find_blocks(text, compose_reference, reading) == (blocks, problems)
    return blocks


def images(text: str, reading: Reading = DEFAULT_READING) -> dict[str, str]:
    return {".".join(map(str, b.path)): b.repository for b in read(text, reading)}


def write(
    text: str,
    block: RawBlock,
    new: str,
    field: Field = "shasum",
    reading: Reading = DEFAULT_READING,
) -> str:
    old = block.value(field)
    edit = Edit(block.document, block.path, field, old, new, block.repository, block.tag)
    out, results = apply_edits(text, [edit], reading=reading)
    assert [r.status for r in results] == ["applied"], results
    assert apply_edits(text, [edit], compose_reference, reading)[0] == out
    return out


# --- registries ------------------------------------------------------------------------------


def test_a_registry_key_is_joined_to_the_repository() -> None:
    text = (
        "operator:\n"
        "  image: {registry: ghcr.io, repository: zalando/postgres-operator, tag: v2.0.1}\n"
        "hub:\n"
        "  image: {registry: '', repository: bitnami/nginx, tag: '1.25'}\n"
        "none:\n"
        "  image: {registry: ~, repository: busybox, tag: '1.36'}\n"
    )
    assert images(text) == {
        "operator.image": "ghcr.io/zalando/postgres-operator",
        "hub.image": "bitnami/nginx",
        "none.image": "busybox",
    }


def test_global_image_registry_replaces_every_registry_as_bitnami_does() -> None:
    text = (
        "global:\n"
        "  imageRegistry: mirror.example.com\n"
        "image: {registry: docker.io, repository: bitnami/postgresql, tag: '17'}\n"
        "exporter: {repository: bitnami/postgres-exporter, tag: '0.17'}\n"
        "---\n"
        "global: {imageRegistry: ''}\n"
        "image: {registry: docker.io, repository: bitnami/postgresql, tag: '17'}\n"
    )
    assert [(b.document, b.repository) for b in read(text)] == [
        (0, "mirror.example.com/bitnami/postgresql"),
        (0, "mirror.example.com/bitnami/postgres-exporter"),
        (1, "docker.io/bitnami/postgresql"),
    ]


def test_global_image_registry_fills_in_only_where_a_block_has_none_as_ingress_nginx_does() -> None:
    text = (
        "global:\n"
        "  image:\n"
        "    registry: registry.k8s.io\n"
        "controller:\n"
        "  image:\n"
        "    image: ingress-nginx/controller\n"
        '    tag: "v1.15.1"\n'
        "defaultBackend:\n"
        "  image: {registry: mirror.example.com, image: defaultbackend-amd64, tag: '1.5'}\n"
    )
    assert images(text, IMAGE) == {
        "controller.image": "registry.k8s.io/ingress-nginx/controller",
        "defaultBackend.image": "mirror.example.com/defaultbackend-amd64",
    }
    # Without the image key, neither mapping is a block.
    assert images(text) == {}


def test_global_image_registry_is_read_only_as_configured_since_charts_differ() -> None:
    text = (
        "global: {image: {registry: mirror.example.com}}\n"
        "loki: {image: {registry: docker.io, repository: grafana/loki, tag: '3.5'}}\n"
        "canary: {image: {repository: grafana/loki-canary, tag: '3.5'}}\n"
    )
    assert images(text) == {
        "loki.image": "docker.io/grafana/loki",
        "canary.image": "grafana/loki-canary",
    }
    # Loki's and Tempo's charts: an override (`coalesce .global.registry .service.registry`).
    loki = Reading(Keys(registry_override=("global.imageRegistry", "global.image.registry")), ())
    assert images(text, loki) == {
        "loki.image": "mirror.example.com/grafana/loki",
        "canary.image": "mirror.example.com/grafana/loki-canary",
    }


def test_the_global_conventions_can_be_turned_off() -> None:
    text = "global: {imageRegistry: mirror.example.com}\nimage: {repository: nginx, tag: '1'}\n"
    off = Reading(Keys(registry_override=()), ())
    assert images(text, off) == {"image": "nginx"}


def test_a_person_changing_the_registry_stops_an_edit_decided_before() -> None:
    text = "image: {registry: ghcr.io, repository: team/api, tag: master}\n"
    (block,) = read(text)
    moved = text.replace("ghcr.io", "quay.io")
    edit = Edit(block.document, block.path, "shasum", None, D1, block.repository, block.tag)
    out, (result,) = apply_edits(moved, [edit])
    assert (out, result.status) == (moved, "skipped")
    assert "repository changed" in result.reason


# --- the key the chart reads -----------------------------------------------------------------


def test_the_digest_goes_into_digest_when_the_block_has_it() -> None:
    text = (
        "image:\n  registry: docker.io\n  repository: bitnami/redis\n  tag: '8'\n  digest: \"\"\n"
    )
    (block,) = read(text)
    assert block.shasum is None
    out = write(text, block, D2)
    assert out == text.replace('digest: ""', f'digest: "{D2}"')
    (again,) = read(out)
    assert again.shasum == D2


def test_sha_holds_the_bare_hex_and_reads_as_a_digest() -> None:
    text = (
        "image:\n"
        "  registry: quay.io\n"
        "  repository: prometheus/prometheus\n"
        "  tag: v3.14.0\n"
        "  sha: ''\n"
        "  pullPolicy: IfNotPresent\n"
    )
    (block,) = read(text)
    out = write(text, block, D2)
    assert out == text.replace("sha: ''", f"sha: '{HEX2}'")
    (again,) = read(out)
    assert again.shasum == D2  # the role's value is a digest, whatever the chart's form
    assert write(out, again, D1) == text.replace("sha: ''", f"sha: '{'1' * 64}'")


def test_shasum_is_added_when_the_block_has_no_digest_key_and_a_configured_key_instead() -> None:
    text = "image:\n  repository: team/api\n  tag: master\n  pullPolicy: Always\n"
    (block,) = read(text)
    assert write(text, block, D1) == text.replace("master\n", f"master\n  shasum: {D1}\n")
    (block,) = read(text, IMAGE)
    assert write(text, block, D1, reading=IMAGE) == text.replace(
        "master\n", f"master\n  digest: {D1}\n"
    )
    flow = "image: {repository: team/api, tag: master}\n"
    (block,) = read(flow, IMAGE)
    assert write(flow, block, D1, reading=IMAGE) == (
        f'image: {{repository: team/api, tag: master, digest: "{D1}"}}\n'
    )


def test_digest_wins_over_sha_and_shasum_and_a_persons_value_there_is_read() -> None:
    text = f"image: {{repository: a, tag: b, shasum: {D1}, digest: {D2}}}\n"
    (block,) = read(text)
    assert block.shasum == D2
    text = f"image: {{repository: a, tag: b, sha: '{HEX2}'}}\n"
    (block,) = read(text)
    assert block.shasum == D2


def test_a_prefixed_sha_is_a_problem_the_chart_would_render_twice() -> None:
    text = f"image:\n  repository: a\n  tag: b\n  sha: {D1}\n"
    blocks, problems = find_blocks(text)
    assert [b.shasum for b in blocks] == [D1]
    assert [(p.line, p.message) for p in problems] == [
        (4, "image: sha is written without sha256: (the chart adds it): the 64 hex digits alone")
    ]


# --- the chart's default is nobody's block ---------------------------------------------------


@pytest.mark.parametrize(
    "mapping",
    [
        "{repository: kyverno/kyverno, tag: ~}",
        "{repository: kyverno/kyverno, tag: null}",
        "{repository: kyverno/kyverno, tag: ''}",
        '{repository: kyverno/kyverno, tag: ""}',
        "{repository: kyverno/kyverno, tag: }",
        "{repository: kyverno/kyverno}",
        "{repository: '', tag: ''}",
        "{repository: '', tag: v1}",
        "{repository: ~, tag: v1}",
        "{registry: docker.io, repository: null, tag: null, digest: null}",
    ],
)
def test_an_empty_tag_or_repository_is_the_charts_default_not_a_problem(mapping: str) -> None:
    assert find_blocks(f"image: {mapping}\n") == ([], [])
    assert find_blocks(f"image: {mapping}\n", compose_reference) == ([], [])


def test_a_float_tag_stays_a_problem_with_its_advice() -> None:
    blocks, problems = find_blocks("image:\n  repository: nginx\n  tag: 4.14\n")
    assert blocks == []
    assert [(p.line, p.message) for p in problems] == [
        (3, "image: tag must be a string; quote it (found '4.14')")
    ]


def test_ingress_nginx_reads_repository_first_then_image() -> None:
    text = (
        "a: {repository: '', image: ingress-nginx/controller, registry: registry.k8s.io, tag: v1}\n"
        "b: {repository: mirror.example.com/nginx, image: ignored, tag: v1}\n"
    )
    assert images(text, IMAGE) == {
        "a": "registry.k8s.io/ingress-nginx/controller",
        "b": "mirror.example.com/nginx",
    }


# --- git.keys and git.strings in shards.yaml -------------------------------------------------


def test_git_keys_load_and_default() -> None:
    config = load_text("git: {url: x}\n", "s.yaml", {})
    assert config.git.keys == Keys()
    assert config.git.keys.digest == ("digest", "sha", "shasum")
    assert config.git.strings == ()
    config = load_text(
        "git:\n  url: x\n  keys: {repository: [repository, image], digest: digest}\n"
        "  strings: ['**/image']\n",
        "s.yaml",
        {},
    )
    assert Reading.of(config.git) == Reading(
        Keys(repository=("repository", "image"), digest=("digest",)), ("**/image",)
    )


def test_git_keys_problems_name_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_text(
            "git:\n  url: x\n  keys:\n    tag: [tag, repository]\n    digest: []\n    shasum: x\n",
            "s.yaml",
            {},
        )
    assert info.value.problems == [
        "s.yaml:6: git.keys.shasum: unknown key (known: digest, hex, registry, "
        "registry_fallback, registry_override, repository, tag)",
        "s.yaml:5: git.keys.digest: must be a non-empty list of key names",
        "s.yaml:4: git.keys.tag: 'repository' is named for both repository and tag",
    ]


# --- strings, opt-in -------------------------------------------------------------------------

STRINGS = Reading(Keys(), ("**/image", "**/*_image"))
STRING_VALUES = f"""\
image: eu.gcr.io/p/api:master   # the API
worker:
  sidecar_image: "busybox:1.36@{D1}"
  image: nginx
  command: run:fast
jobs:
  - {{name: a, image: 'nginx:1.25'}}
"""


def test_strings_are_blocks_only_where_git_strings_names_their_key_paths() -> None:
    assert read(STRING_VALUES) == []
    blocks = read(STRING_VALUES, STRINGS)
    assert [(b.path, b.repository, b.tag, b.shasum, b.string) for b in blocks] == [
        (("image",), "eu.gcr.io/p/api", "master", None, True),
        (("worker", "sidecar_image"), "busybox", "1.36", D1, True),
        (("jobs", 0, "image"), "nginx", "1.25", None, True),
    ]
    # A string's tag is what tag strategies move: it is its overrideTag too.
    assert blocks[0].value("overrideTag") == "master"
    assert blocks[0].with_value("overrideTag", "v2") == (
        RawBlock(0, ("image",), 1, "eu.gcr.io/p/api", "v2", None, None, string=True)
    )


def test_a_string_that_is_no_reference_is_a_problem_and_one_without_a_tag_no_block() -> None:
    text = f"a: {{image: 'Team/API:v1'}}\nb: {{image: 'nginx@{D1}'}}\nc: {{image: ''}}\n"
    blocks, problems = find_blocks(text, reading=STRINGS)
    assert blocks == []
    assert [p.line for p in problems] == [1]
    assert "a.image: bad repository path" in problems[0].message


def test_string_edits_rewrite_the_whole_reference_and_nothing_else() -> None:
    image, sidecar, job = read(STRING_VALUES, STRINGS)
    out = write(STRING_VALUES, image, D2, reading=STRINGS)
    assert out == STRING_VALUES.replace("api:master ", f"api:master@{D2} ")
    out = write(STRING_VALUES, sidecar, D2, reading=STRINGS)
    assert out == STRING_VALUES.replace(D1, D2)
    # A tag strategy moves the tag; the old digest named another build, so it goes.
    out = write(STRING_VALUES, sidecar, "1.37", "overrideTag", STRINGS)
    assert out == STRING_VALUES.replace(f"busybox:1.36@{D1}", "busybox:1.37")
    out = write(STRING_VALUES, job, "1.27", "overrideTag", STRINGS)
    assert out == STRING_VALUES.replace("'nginx:1.25'", "'nginx:1.27'")
    (moved,) = [b for b in read(out, STRINGS) if b.path == ("jobs", 0, "image")]
    assert (moved.tag, moved.value("overrideTag")) == ("1.27", "1.27")


def test_a_shared_string_is_not_rewritten() -> None:
    anchored = "a: {image: &img 'nginx:1.25'}\nb: {image: *img}\n"
    merged = "base: &base\n  image: nginx:1.25\nother:\n  <<: *base\n"
    for text in (anchored, merged):
        block = read(text, STRINGS)[0]
        edit = Edit(block.document, block.path, "shasum", None, D1, block.repository, block.tag)
        out, (result,) = apply_edits(text, [edit], reading=STRINGS)
        assert (out, result.status) == (text, "skipped")
        assert "would change" in result.reason or "merged" in result.reason
