from __future__ import annotations

import pytest

from watcher.errors import InvalidReference
from watcher.references import ImageName, canonical_name, is_digest, is_tag, parse_reference

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "host", "path", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", None, None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("bitnami/redis", "docker.io", "bitnami/redis", None, None),
        ("docker.io/nginx", "docker.io", "library/nginx", None, None),
        ("index.docker.io/library/nginx", "docker.io", "library/nginx", None, None),
        (
            "eu.gcr.io/ma-dev2/dev-images/estima",
            "eu.gcr.io",
            "ma-dev2/dev-images/estima",
            None,
            None,
        ),
        ("EU.GCR.IO/p/x:master", "eu.gcr.io", "p/x", "master", None),
        ("localhost:5000/app", "localhost:5000", "app", None, None),
        ("localhost/app", "localhost", "app", None, None),
        ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", None),
        (
            f"europe-docker.pkg.dev/p/r/app@{DIGEST}",
            "europe-docker.pkg.dev",
            "p/r/app",
            None,
            DIGEST,
        ),
        (f"gcr.io/p/app:v2@{DIGEST}", "gcr.io", "p/app", "v2", DIGEST),
        ("[::1]:5000/app", "[::1]:5000", "app", None, None),
    ],
)
def test_parse_reference(
    text: str, host: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert ref.name == ImageName(host, path)
    assert (ref.tag, ref.digest) == (tag, digest)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " nginx",
        "Nginx",
        "gcr.io/p/App",
        "gcr.io/p/app:bad tag",
        "gcr.io/p/app:-x",
        "gcr.io/p/app@sha256:abc",
        "gcr.io//app",
        "gcr.io/p/app:" + "x" * 129,
        "gcr.io/p/app\n",
        "a$b/c",
    ],
)
def test_bad_references(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(text)


def test_canonical_name_drops_tag_and_digest() -> None:
    assert str(canonical_name(f"gcr.io/p/app:v1@{DIGEST}")) == "gcr.io/p/app"
    assert canonical_name("nginx") == canonical_name("docker.io/library/nginx:latest")


def test_docker_hub_api_host() -> None:
    assert canonical_name("nginx").api_host == "registry-1.docker.io"
    assert canonical_name("gcr.io/p/app").api_host == "gcr.io"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("master", True),
        ("_x", True),
        ("v1.2.3-rc.1", True),
        ("fixes_TECH-2783_bump_sentry-9d239fd", True),
        ("a" * 128, True),
        ("a" * 129, False),
        (".x", False),
        ("-x", False),
        ("a b", False),
        ("a\nb", False),
        ("a:b", False),
        ("", False),
        (12, False),
    ],
)
def test_tag_grammar(value: object, ok: bool) -> None:
    assert is_tag(value) is ok


def test_digest_grammar() -> None:
    assert is_digest(DIGEST)
    assert not is_digest("sha256:" + "A" * 64)
    assert not is_digest("sha256:" + "a" * 63)
    assert not is_digest("sha512:" + "a" * 64)
    assert not is_digest(DIGEST + "\n")
