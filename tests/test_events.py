"""Registry events, the pure parts: messages as Google publishes them, the config, coverage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watcher.config import load_text
from watcher.errors import ConfigError
from watcher.events import coverage, messages
from watcher.references import ImageName, canonical_name

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")


def fixture_messages() -> list[dict[str, str]]:
    data = json.loads((FIXTURES / "pubsub-gcr-messages.json").read_text())
    assert isinstance(data, list)
    return data


def test_every_fixture_message_is_a_hint_for_its_canonical_image() -> None:
    hints = [messages.parse(json.dumps(m).encode()) for m in fixture_messages()]
    assert all(isinstance(h, messages.Hint) for h in hints)
    tagged, untagged, deleted = hints
    assert isinstance(tagged, messages.Hint)
    assert tagged.image == ImageName("eu.gcr.io", "example-project/dev-images/estima")
    assert tagged.action == "INSERT" and tagged.tag == "master"
    assert tagged.digest is not None and tagged.digest.startswith("sha256:400ee2ed")
    assert isinstance(untagged, messages.Hint)
    assert untagged.image == ImageName("europe-docker.pkg.dev", "example-project/dev-images/estima")
    assert untagged.tag is None and untagged.digest is not None
    assert isinstance(deleted, messages.Hint)
    assert deleted.action == "DELETE" and deleted.tag == "old-build" and deleted.digest is None


def test_docker_hub_short_names_canonicalise_like_blocks() -> None:
    hint = messages.parse(b'{"action": "INSERT", "tag": "nginx:1.25"}')
    assert isinstance(hint, messages.Hint)
    assert hint.image == canonical_name("nginx")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"digest": "eu.gcr.io/p/app@sha256:' + b"a" * 64 + b'"}', "action"),
        (b'{"action": "UPDATE", "tag": "eu.gcr.io/p/app:v1"}', "action"),
        (b'{"action": "INSERT"}', "neither digest nor tag"),
        (b'{"action": "INSERT", "tag": 7}', "not a string"),
        (b'{"action": "INSERT", "tag": "eu.gcr.io/p/App:v1"}', "tag"),
        (b'{"action": "INSERT", "tag": "eu.gcr.io/p/app"}', "names no tag"),
        (b'{"action": "INSERT", "digest": "eu.gcr.io/p/app:v1"}', "names no digest"),
        (b'{"action": "INSERT", "digest": "eu.gcr.io/p/app@sha256:12"}', "digest"),
        (
            b'{"action": "INSERT", "digest": "eu.gcr.io/p/a@sha256:' + b"a" * 64 + b'", '
            b'"tag": "eu.gcr.io/p/b:v1"}',
            "different images",
        ),
    ],
)
def test_malformed_messages_say_why(data: bytes, why: str) -> None:
    parsed = messages.parse(data)
    assert isinstance(parsed, messages.Malformed)
    assert why in parsed.reason


def config(events: str, registries: str = "") -> str:
    return f"""
git: {{url: /tmp/remote.git}}
interval: 2m
registries:
  - {{host: "*.gcr.io", api: google}}
  - {{host: "*-docker.pkg.dev", api: google}}
{registries}
{events}
"""


def test_events_default_to_off_and_load_as_written() -> None:
    assert load_text(config(""), "s.yaml", {}).events.subscriptions == ()
    loaded = load_text(
        config(
            "events:\n  subscriptions: [projects/acme-dev/subscriptions/image-watcher]\n"
            "  backstop: 15m\n"
        ),
        "s.yaml",
        {},
    ).events
    assert loaded.subscriptions == ("projects/acme-dev/subscriptions/image-watcher",)
    assert loaded.backstop == 900.0
    assert loaded.projects == frozenset({"acme-dev"})
    assert load_text(config("events: {subscriptions: []}"), "s.yaml", {}).events.backstop == 600.0


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ("events: {subscriptions: [image-watcher]}", "s.yaml:8: events.subscriptions:"),
        ("events: {subscriptions: [projects/acme-dev/topics/gcr]}", "not a subscription path"),
        ("events: {subscriptions: [projects/x/subscriptions/w]}", "not a subscription path"),
        (
            "events: {subscriptions: [projects/acme-dev/subscriptions/watcher, "
            "projects/acme-dev/subscriptions/watcher]}",
            "listed twice",
        ),
        ("events: {backstop: soon}", "events.backstop: not a duration"),
        ("events: {subscription: [projects/acme-dev/subscriptions/watcher]}", "unknown key"),
    ],
)
def test_bad_events_config_is_a_file_line_problem(events: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_text(config(events), "s.yaml", {})
    assert any(problem in line for line in raised.value.problems), raised.value.problems


def test_covered_images_are_on_google_registries_of_subscribed_or_seen_projects() -> None:
    loaded = load_text(
        config("events: {subscriptions: [projects/acme-dev/subscriptions/watcher]}"), "s.yaml", {}
    )
    assert coverage.covered(loaded, canonical_name("eu.gcr.io/acme-dev/app"))
    assert coverage.covered(loaded, canonical_name("europe-docker.pkg.dev/acme-dev/repo/app"))
    assert not coverage.covered(loaded, canonical_name("eu.gcr.io/other/app"))
    assert coverage.covered(loaded, canonical_name("eu.gcr.io/other/app"), {"other"})
    # Not a Google registry: no events, whatever the path says.
    assert not coverage.covered(loaded, canonical_name("ghcr.io/acme-dev/app"), {"acme-dev"})
    # No subscription: nothing is covered.
    plain = load_text(config(""), "s.yaml", {})
    assert not coverage.covered(plain, canonical_name("eu.gcr.io/acme-dev/app"), {"acme-dev"})


def test_each_covered_image_is_due_once_per_backstop() -> None:
    loaded = load_text(
        config("events: {subscriptions: [projects/acme-dev/subscriptions/watcher], backstop: 10m}"),
        "s.yaml",
        {},
    )
    sweeps = coverage.period(loaded)
    assert sweeps == 5
    images = [canonical_name(f"eu.gcr.io/acme-dev/app{i}") for i in range(500)]
    for image in images[:50]:
        assert sum(coverage.due(image, sweep, sweeps) for sweep in range(100, 110)) == 2
    per_sweep = [sum(coverage.due(i, sweep, sweeps) for i in images) for sweep in range(sweeps)]
    assert sum(per_sweep) == len(images)
    assert max(per_sweep) < 2 * len(images) / sweeps  # spread, not bunched in one sweep
    short = load_text(
        config("events: {subscriptions: [projects/acme-dev/subscriptions/watcher], backstop: 1m}"),
        "s.yaml",
        {},
    )
    assert coverage.period(short) == 1
