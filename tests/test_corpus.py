"""Values fixtures in the shapes of eight public charts (``tests/corpus/``, SOURCES.md).

Each fixture is written for these tests, not copied: it puts its chart's images at
the chart's key paths in the chart's shapes, amid comments, quoting styles, nested
maps and lists. Which blocks the watcher finds in each, which image each one pulls
and which key its digest goes in, as the chart's own templates read them; that both
composers read them alike; that ``watcher check`` passes them in the shape the charts
ship; and, with their registries pointed at a local docker-registry, that one cycle
writes every digest into the key the chart reads and changes no other byte.
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ruamel.yaml import YAML

from tests.conftest import DockerRegistry, GitRemote, make_remote
from watcher.blocks import Edit
from watcher.config import load_text
from watcher.config.settings import Keys
from watcher.engine import Engine
from watcher.gitops.values import Reading, apply_edits, find_blocks
from watcher.gitops.values.compose import compose, compose_reference
from watcher.gitops.values.read import scan_text
from watcher.references import canonical_name
from watcher_testing.images import push_image

CORPUS = Path(__file__).resolve().parent / "corpus"
DEFAULT = Keys()
# What shards.yaml documents for ingress-nginx's {registry, image, tag, digest} blocks.
IMAGE_KEYS = Keys(
    repository=("repository", "image"),
    digest=("digest",),
    registry_fallback=("global.image.registry",),
)
IMAGE_KEYS_YAML = (
    "{repository: [repository, image], digest: [digest], "
    "registry_fallback: [global.image.registry]}"
)

# file -> (keys, {block path: (image pulled, key the digest goes in)}), from the templates.
EXPECTED: dict[str, tuple[Keys, dict[str, tuple[str, str]]]] = {
    "argo-cd.values.yaml": (
        DEFAULT,
        {
            # The `{repository: "", tag: ""}` placeholders inherit global.image: no blocks.
            "dex.image": ("ghcr.io/dexidp/dex", "shasum"),
            "redis.image": ("ecr-public.aws.com/docker/library/redis", "shasum"),
            "redis.exporter.image": ("ghcr.io/oliver006/redis_exporter", "shasum"),
            "redis-ha.image": ("ecr-public.aws.com/docker/library/redis", "shasum"),
            "server.extensions.image": (
                "quay.io/argoprojlabs/argocd-extension-installer",
                "shasum",
            ),
        },
    ),
    "bitnami-postgresql.values.yaml": (
        DEFAULT,
        {
            "image": ("docker.io/bitnami/postgresql", "digest"),
            "volumePermissions.image": ("docker.io/bitnami/os-shell", "digest"),
            "metrics.image": ("docker.io/bitnami/postgres-exporter", "digest"),
        },
    ),
    # Every image is `imageRegistry/imageNamespace/name` with the tag left to appVersion.
    "cert-manager.values.yaml": (DEFAULT, {}),
    "grafana.values.yaml": (
        DEFAULT,
        {
            # `image` leaves its tag to appVersion.
            "testFramework.image": ("docker.io/bats/bats", "shasum"),
            "downloadDashboardsImage": ("docker.io/curlimages/curl", "sha"),
            "initChownData.image": ("docker.io/library/busybox", "sha"),
            "sidecar.image": ("quay.io/kiwigrid/k8s-sidecar", "sha"),
            "imageRenderer.image": ("docker.io/grafana/grafana-image-renderer", "sha"),
        },
    ),
    "ingress-nginx.values.yaml": (
        IMAGE_KEYS,
        {
            # No registry of its own: global.image.registry's.
            "controller.image": ("registry.k8s.io/ingress-nginx/controller", "digest"),
            "controller.admissionWebhooks.patch.image": (
                "registry.k8s.io/ingress-nginx/kube-webhook-certgen",
                "digest",
            ),
            "defaultBackend.image": ("registry.k8s.io/defaultbackend-amd64", "digest"),
        },
    ),
    "kube-prometheus-stack.values.yaml": (
        DEFAULT,
        {
            # kubectl, the operator, its webhook and config reloader: tag "" (appVersion).
            "crds.upgradeJob.image.busybox": ("docker.io/library/busybox", "sha"),
            "alertmanager.alertmanagerSpec.image": ("quay.io/prometheus/alertmanager", "sha"),
            "prometheusOperator.admissionWebhooks.patch.image": (
                "ghcr.io/jkroepke/kube-webhook-certgen",
                "sha",
            ),
            "prometheusOperator.thanosImage": ("quay.io/thanos/thanos", "sha"),
            "prometheus.prometheusSpec.image": ("quay.io/prometheus/prometheus", "sha"),
            "thanosRuler.thanosRulerSpec.image": ("quay.io/thanos/thanos", "sha"),
        },
    ),
    # Every tag is `~` (appVersion).
    "kyverno.values.yaml": (DEFAULT, {}),
    # `image` is all nulls (appVersion, the chart's registry).
    "traefik.values.yaml": (DEFAULT, {}),
}

# How each file's registries are pointed at the test registry: (text, replacement with
# {host}); each text must occur. The chart families' own conventions do the rest.
POINT: dict[str, list[tuple[str, str]]] = {
    "argo-cd.values.yaml": [
        ("ghcr.io/", "{host}/"),
        ("ecr-public.aws.com/", "{host}/"),
        ('"quay.io/argoprojlabs/', '"{host}/argoprojlabs/'),
    ],
    "bitnami-postgresql.values.yaml": [('  imageRegistry: ""', '  imageRegistry: "{host}"')],
    "grafana.values.yaml": [("  imageRegistry: null", '  imageRegistry: "{host}"')],
    "ingress-nginx.values.yaml": [("registry: registry.k8s.io", 'registry: "{host}"')],
    "kube-prometheus-stack.values.yaml": [('  imageRegistry: ""', '  imageRegistry: "{host}"')],
}


def _reading(keys: Keys) -> Reading:
    return Reading(keys, ())


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path)


def _at(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_blocks_found_images_and_digest_keys(name: str) -> None:
    keys, expected = EXPECTED[name]
    text = (CORPUS / name).read_text()
    scan = scan_text(text, reading=_reading(keys))
    assert scan.problems == []
    found = {
        _dotted(f.raw.path): (str(canonical_name(f.raw.repository)), f.digest_key)
        for f in scan.blocks
    }
    assert found == expected
    # libyaml and the reference, ruamel.yaml, find the same blocks at the same marks.
    reference = scan_text(text, compose_reference, _reading(keys))
    assert [f.raw for f in reference.blocks] == [f.raw for f in scan.blocks]
    for fast, slow in zip(scan.blocks, reference.blocks, strict=True):
        marks = {
            role: (e.key.start_mark.index, e.value.start_mark.index)
            for role, e in fast.entries.items()
        }
        assert marks == {
            role: (e.key.start_mark.index, e.value.start_mark.index)
            for role, e in slow.entries.items()
        }
        assert (fast.digest_key, fast.hex) == (slow.digest_key, slow.hex)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(n for n, (_, blocks) in EXPECTED.items() if blocks))
def test_digest_edits_change_only_the_digest_and_both_composers_agree(name: str) -> None:
    keys, expected = EXPECTED[name]
    reading = _reading(keys)
    text = (CORPUS / name).read_text()
    blocks, _ = find_blocks(text, reading=reading)
    new = {b.path: "sha256:" + f"{i:x}".rjust(64, "a") for i, b in enumerate(blocks)}
    edits = [
        Edit(b.document, b.path, "shasum", b.shasum, new[b.path], b.repository, b.tag)
        for b in blocks
    ]
    out, results = apply_edits(text, edits, compose, reading)
    assert [r.status for r in results] == ["applied"] * len(blocks)
    assert (out, results) == apply_edits(text, edits, compose_reference, reading)
    _assert_only_digests(text, out, {b.path: new[b.path] for b in blocks}, expected)


def _assert_only_digests(
    before: str,
    after: str,
    digests: dict[tuple[str | int, ...], str],
    expected: dict[str, tuple[str, str]],
) -> None:
    """``after`` is ``before`` with each block's digest in the key its chart reads, in the
    form it reads (bare hex in ``sha``), and not one other byte changed."""
    yaml = YAML(typ="safe")
    old, now = yaml.load(before), yaml.load(after)
    for path, digest in digests.items():
        key = expected[_dotted(path)][1]
        want = digest.removeprefix("sha256:") if key == "sha" else digest
        assert _at(now, path)[key] == want
        _at(old, path)[key] = want
    assert now == old  # nothing else changed in meaning...
    diff = [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    removed = [line for line in diff if line.startswith("-")]
    added = [line for line in diff if line.startswith("+")]
    # ...and in bytes: only digest lines went, one digest line per block came.
    assert all(
        re.fullmatch(r'-\s*(digest|sha|shasum): *(""|\'\'|~|null|sha256:[0-9a-f]{64})?', line)
        for line in removed
    )
    assert len(added) == len(digests)
    assert all(
        re.fullmatch(r"\+\s*(digest|sha|shasum): ([\"']?)(sha256:)?[0-9a-f]{64}\2", line)
        for line in added
    )
    assert before.endswith("\n") == after.endswith("\n")


def _watcher(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args], capture_output=True, text=True, timeout=120
    )


def _config(path: Path, remote: GitRemote, tmp_path: Path, keys: str, files: str) -> Path:
    path.write_text(
        f"""
interval: 1s
limits:
  local: {{requests: 1000, per: 1m, headroom: 0%}}
registries:
  - {{host: "127.0.0.1:*", api: v2, auth: anonymous, insecure: true, limit: local}}
git:
  url: {remote.url}
  branches: ["environment/*"]
  files: {files}
  author: {{name: image-watcher, email: watcher@example.com}}
  workdir: {tmp_path / path.stem}
  keys: {keys}
"""
    )
    return path


@pytest.mark.integration
def test_watcher_check_passes_the_files_as_they_ship(tmp_path: Path) -> None:
    files = {
        f"apps/{n.removesuffix('.values.yaml')}/values.yaml": (CORPUS / n).read_text()
        for n in EXPECTED
    }
    remote = make_remote(tmp_path, {"environment/stock": files})
    plain = _config(tmp_path / "plain.yaml", remote, tmp_path, "{}", '["apps/*/values.yaml"]')
    result = _watcher("check", "--config", str(plain))
    assert (result.returncode, result.stderr) == (0, "")
    blocks = sum(len(b) for n, (k, b) in EXPECTED.items() if k == DEFAULT)
    assert f"{blocks} valid block(s), 0 problem(s)" in result.stdout
    image = _config(
        tmp_path / "image.yaml",
        remote,
        tmp_path,
        IMAGE_KEYS_YAML,
        '["apps/ingress-nginx/values.yaml"]',
    )
    result = _watcher("check", "--config", str(image))
    assert (result.returncode, result.stderr) == (0, "")
    assert "3 valid block(s), 0 problem(s)" in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(POINT))
async def test_one_cycle_writes_each_digest_where_the_chart_reads_it(
    name: str,
    docker_registry: DockerRegistry,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    keys, expected = EXPECTED[name]
    host = docker_registry.host
    text = (CORPUS / name).read_text()
    for old, new in POINT[name]:
        assert old in text
        text = text.replace(old, new.format(host=host))
    blocks, problems = find_blocks(text, reading=_reading(keys))
    assert problems == []
    # Every block now pulls from the test registry, the same path as the chart's own.
    assert {_dotted(b.path) for b in blocks} == set(expected)
    pushed: dict[tuple[str, str], str] = {}
    for block in blocks:
        image = canonical_name(block.repository)
        assert image.host == host
        # Docker Hub's `library/` is Docker Hub's alone.
        chart = canonical_name(expected[_dotted(block.path)][0]).path.removeprefix("library/")
        assert image.path.removeprefix("library/") == chart
        assert block.tag is not None
        if (image.path, block.tag) not in pushed:
            pushed[(image.path, block.tag)] = await push_image(
                session,
                docker_registry.url,
                image.path,
                block.tag,
                kind="oci",
                seed=f"{image.path}:{block.tag}",
            )
    file = "apps/chart/values.yaml"
    remote = make_remote(tmp_path, {"environment/corpus": {file: text}})
    keys_yaml = IMAGE_KEYS_YAML if keys == IMAGE_KEYS else "{}"
    config = load_text(
        _config(tmp_path / "c.yaml", remote, tmp_path, keys_yaml, f'["{file}"]').read_text(),
        "c.yaml",
        {},
    )
    async with Engine(config) as watcher:
        report = await watcher.cycle()
    assert {o.result for o in report.outcomes.values()} == {"committed"}
    after = remote.read("environment/corpus", file)
    digests = {b.path: pushed[(canonical_name(b.repository).path, str(b.tag))] for b in blocks}
    _assert_only_digests(text, after, digests, expected)
    # Read back as the watcher reads it: every block up to date, nothing more to do.
    assert {b.path: b.shasum for b in find_blocks(after, reading=_reading(keys))[0]} == digests
    head = remote.head("environment/corpus")
    async with Engine(config) as watcher:
        again = await watcher.cycle()
    assert again.updates == []
    assert remote.head("environment/corpus") == head
