"""``api: google`` end to end: the emulator in GCR and Artifact Registry modes, real git remotes.

Every strategy on one image is answered by one ``tags/list`` (every page) per
cycle, counted on the emulator's request log; auth goes through google-auth's
Application Default Credentials against the emulator's metadata server.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from ruamel.yaml import YAML

from tests.conftest import GitRemote, make_remote, watcher_config
from watcher import logs
from watcher.config import Config
from watcher.engine import Engine
from watcher.errors import ExtensionError
from watcher.registry.google import facts_from_pages
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator, LoggedRequest

ZERO = "sha256:" + "0" * 64
HELM = "application/vnd.cncf.helm.config.v1+json"
SENTRY = "fixes_TECH-2783_bump_sentry-"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# Every strategy following one image, on two branches. `off` is unquoted on
# purpose: a YAML 1.1 reader takes it for false.
API_VALUES = """\
digest:
  repository: {host}/team/api
  tag: master
newest:
  repository: {host}/team/api
  tag: master
  watch:
    strategy: newest
    tags: 'fixes_TECH-2783_bump_sentry-[0-9a-f]{{7}}'
    ignore: ['*-0000000']
semver:
  repository: {host}/team/api
  tag: master
  watch: {{strategy: semver, semver: '~1.4'}}
lexical:
  repository: {host}/team/api
  tag: master
  watch: {{strategy: lexical, tags: 'build-.*'}}
off:
  repository: {host}/team/api
  tag: master
  overrideTag: hand-picked
  watch: {{strategy: off}}
pinned:
  repository: {host}/team/api
  tag: master
  overrideTag: fixes_TECH-1
  shasum: "{zero}"
chart:
  repository: {host}/team/api
  tag: build-9
"""

OTHER_BRANCH = """\
image:
  repository: {host}/team/api
  tag: master
  shasum: {zero}
sidecar:
  repository: {host}/team/api
  tag: master
  watch: {{strategy: semver}}
web:
  repository: {host}/team/web
  tag: master
"""


def read_values(remote: GitRemote, branch: str, file: str) -> dict[str, Any]:
    data = YAML(typ="safe").load(remote.read(branch, file))
    assert isinstance(data, dict)
    return data


def google_config(
    emu: GoogleRegistryEmulator, remote: GitRemote, tmp_path: Path, auth: str
) -> Config:
    return watcher_config(emu.host, remote, tmp_path, api="google", auth=auth)


@dataclass
class Pushed:
    master: str
    web: str
    newest: str  # the digest of the newest matching branch build
    tags: int  # tags of team/api


def push_fixture_images(emu: GoogleRegistryEmulator) -> Pushed:
    def at(minutes: int) -> datetime:
        return T0 + timedelta(minutes=minutes)

    master = emu.push("team/api", "master", kind="index", uploaded=at(30))
    web = emu.push("team/web", "master", kind="docker", uploaded=at(30))
    newest = ""
    for minutes, sha in ((1, "aaaaaaa"), (5, "bbbbbbb"), (3, "ccccccc")):
        digest = emu.push("team/api", SENTRY + sha, uploaded=at(minutes))
        if sha == "bbbbbbb":
            newest = digest
    # Newer, but each excluded: ignored by glob, not a full match, another branch.
    emu.push("team/api", SENTRY + "0000000", uploaded=at(9))
    emu.push("team/api", SENTRY + "ddddddd-dirty", uploaded=at(9))
    emu.push("team/api", "fixes_TECH-9999_other-eeeeeee", uploaded=at(9))
    for version in ("1.4.2", "1.4.10", "v1.4.3", "1.4.11-rc.1", "1.5.0", "1.4"):
        emu.push("team/api", version, uploaded=at(2))
    for build in ("build-1", "build-2", "build-10"):
        emu.push("team/api", build, uploaded=at(2))
    # Lexically highest, but a Helm chart, not an image: never picked.
    emu.push("team/api", "build-9", uploaded=at(2), media_type=HELM)
    # An untagged digest is listed in the map too.
    emu.push("team/api", None, uploaded=at(40))
    return Pushed(master=master, web=web, newest=newest, tags=len(emu.tags("team/api")))


def environments(host: str) -> dict[str, dict[str, str | bytes]]:
    fmt = {"host": host, "zero": ZERO}
    return {
        "environment/b2c1": {"apps/api/values.yaml": API_VALUES.format(**fmt)},
        "environment/b2b1": {"apps/api/values.yaml": OTHER_BRANCH.format(**fmt)},
    }


def since(emu: GoogleRegistryEmulator, mark: int) -> list[LoggedRequest]:
    return emu.log[mark:]


def kinds(entries: list[LoggedRequest]) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in entries:
        out[entry.kind] = out.get(entry.kind, 0) + 1
    return out


@pytest.fixture(params=["gcr", "artifact"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure("debug", stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


# --- every strategy, one listing -------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("page_size", [1000, 3], ids=["one-page", "pages"])
async def test_every_strategy_from_one_listing(mode: str, page_size: int, tmp_path: Path) -> None:
    settings = EmulatorSettings(mode=mode, auth_required=False, page_size_max=page_size)  # type: ignore[arg-type]
    async with GoogleRegistryEmulator(settings) as emu:
        pushed = push_fixture_images(emu)
        remote = make_remote(tmp_path, environments(emu.host))
        config = google_config(emu, remote, tmp_path, "anonymous")
        pages = math.ceil(pushed.tags / page_size)
        assert (pages > 1) == (page_size == 3)
        async with Engine(config) as watcher:
            report = await watcher.cycle()
            first = list(emu.log)
            second_mark = len(emu.log)
            heads = {b: remote.head(b) for b in remote.branches()}
            again = await watcher.cycle()
            second = since(emu, second_mark)

    # Exactly the listing of each image, every page of it, and nothing else.
    assert kinds(first) == {"tags_list": pages + 1}
    assert [e.repository for e in first].count("team/api") == pages
    assert [e.repository for e in first].count("team/web") == 1
    assert all(e.status == 200 for e in first)
    assert kinds(second) == kinds(first)

    assert report.failed_images == {}
    api = read_values(remote, "environment/b2c1", "apps/api/values.yaml")
    assert api["digest"]["shasum"] == pushed.master  # the index digest, as docker pull
    assert api["newest"]["overrideTag"] == SENTRY + "bbbbbbb"
    assert api["semver"]["overrideTag"] == "1.4.10"  # not the rc, not 1.5, not the alias
    assert api["lexical"]["overrideTag"] == "build-2"  # not the Helm chart build-9
    assert api["off"] == {
        "repository": f"{emu.host}/team/api",
        "tag": "master",
        "overrideTag": "hand-picked",
        "watch": {"strategy": "off"},
    }
    assert "  overrideTag: hand-picked\n  watch: {strategy: off}\n" in remote.read(
        "environment/b2c1", "apps/api/values.yaml"
    )
    assert api["pinned"]["shasum"] == ZERO and api["pinned"]["overrideTag"] == "fixes_TECH-1"
    assert "shasum" not in api["chart"]
    skipped = {block.path: reason for block, reason in report.skipped}
    assert "build-9" in skipped[("chart",)] and "not found" in skipped[("chart",)]
    other = read_values(remote, "environment/b2b1", "apps/api/values.yaml")
    assert other["image"]["shasum"] == pushed.master
    assert other["sidecar"]["overrideTag"] == "1.5.0"  # semver without constraint: any release
    assert other["web"]["shasum"] == pushed.web
    # Nothing moved: the second cycle commits nothing.
    assert again.updates == []
    assert {b: remote.head(b) for b in remote.branches()} == heads


@pytest.mark.integration
async def test_digest_only_costs_one_listing_per_image(mode: str, tmp_path: Path) -> None:
    settings = EmulatorSettings(mode=mode, auth_required=False)  # type: ignore[arg-type]
    async with GoogleRegistryEmulator(settings) as emu:
        digest = emu.push("team/web", "master")
        emu.push("team/web", "staging")
        host = emu.host
        remote = make_remote(
            tmp_path,
            {
                f"environment/e{i}": {
                    "apps/web/values.yaml": (
                        f"a:\n  repository: {host}/team/web\n  tag: master\n"
                        f"b:\n  repository: {host}/team/web\n  tag: staging\n"
                    )
                }
                for i in range(3)
            },
        )
        async with Engine(google_config(emu, remote, tmp_path, "anonymous")) as watcher:
            await watcher.cycle()
            await watcher.cycle()
    # 3 branches x 2 tags, two cycles: one listing per cycle.
    assert kinds(emu.log) == {"tags_list": 2}
    assert read_values(remote, "environment/e2", "apps/web/values.yaml")["a"]["shasum"] == digest


# --- a developer's branch builds ---------------------------------------------------------------


@pytest.mark.integration
async def test_newest_follows_branch_builds_as_they_are_pushed(mode: str, tmp_path: Path) -> None:
    settings = EmulatorSettings(mode=mode, auth_required=False)  # type: ignore[arg-type]
    async with GoogleRegistryEmulator(settings) as emu:
        emu.push("team/api", "master", uploaded=T0)
        emu.push("team/web", "master", uploaded=T0)
        emu.push("team/api", SENTRY + "1111111", uploaded=T0 + timedelta(minutes=1))
        remote = make_remote(tmp_path, environments(emu.host))
        branch, file = "environment/b2c1", "apps/api/values.yaml"
        async with Engine(google_config(emu, remote, tmp_path, "anonymous")) as watcher:
            await watcher.cycle()
            assert read_values(remote, branch, file)["newest"]["overrideTag"] == SENTRY + "1111111"

            emu.push("team/api", SENTRY + "2222222", uploaded=T0 + timedelta(minutes=2))
            mark = len(emu.log)
            report = await watcher.cycle()
            assert read_values(remote, branch, file)["newest"]["overrideTag"] == SENTRY + "2222222"
            assert [u.strategy for u in report.updates] == ["newest"]
            assert [(e.kind, e.repository) for e in since(emu, mark)] == [
                ("tags_list", "team/api"),
                ("tags_list", "team/web"),
            ]

            # A build of another branch, and a rebuild pushed under an ignored name:
            # newer, but neither is followed.
            emu.push("team/api", "fixes_TECH-1_x-3333333", uploaded=T0 + timedelta(minutes=3))
            emu.push("team/api", SENTRY + "0000000", uploaded=T0 + timedelta(minutes=3))
            report = await watcher.cycle()
            assert report.updates == []

            emu.push("team/api", SENTRY + "4444444", uploaded=T0 + timedelta(minutes=4))
            await watcher.cycle()
    values = read_values(remote, branch, file)
    assert values["newest"]["overrideTag"] == SENTRY + "4444444"
    # The digest block followed master all along, untouched by the builds.
    assert values["digest"]["shasum"] == emu.resolve("team/api", "master")


# --- faults ------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_429_pauses_the_budget_and_the_next_cycle_succeeds(
    mode: str, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    settings = EmulatorSettings(mode=mode, auth_required=False, retry_after=1)  # type: ignore[arg-type]
    async with GoogleRegistryEmulator(settings) as emu:
        pushed = push_fixture_images(emu)
        remote = make_remote(tmp_path, environments(emu.host))
        heads = {b: remote.head(b) for b in remote.branches()}
        emu.fail_next(1, status=429, kind="tags_list")
        async with Engine(google_config(emu, remote, tmp_path, "anonymous")) as watcher:
            report = await watcher.cycle()
            throttled = [e for e in emu.log if e.status == 429]
            assert len(throttled) == 1
            failed = {str(image): reason for image, reason in report.failed_images.items()}
            assert failed == {
                f"{emu.host}/{throttled[0].repository}": (
                    "throttled by the registry (429); budget paused"
                )
            }
            # Retry-After honoured: nothing reached the registry for a second.
            after = [e for e in emu.log if e.monotonic > throttled[0].monotonic]
            assert after and min(e.monotonic for e in after) - throttled[0].monotonic >= 0.9
            # The failed image's blocks were not written at all, wrongly or otherwise.
            failed_path = throttled[0].repository
            if failed_path == "team/api":
                assert remote.head("environment/b2c1") == heads["environment/b2c1"]
            report = await watcher.cycle()
            assert report.failed_images == {}
    api = read_values(remote, "environment/b2c1", "apps/api/values.yaml")
    assert api["newest"]["overrideTag"] == SENTRY + "bbbbbbb"
    assert api["digest"]["shasum"] == pushed.master
    events = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    assert any(e["event"] == "registry throttled" and e["pause"] == 1.0 for e in events)
    assert watcher.metrics.budget_paused.labels("local")._value.get() == 1.0


@pytest.mark.integration
@pytest.mark.parametrize("how", ["extension", "garbage", "truncated"])
async def test_malformed_listing_skips_the_image_with_a_reason(
    mode: str, how: str, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    settings = EmulatorSettings(mode=mode, auth_required=False)  # type: ignore[arg-type]
    async with GoogleRegistryEmulator(settings) as emu:
        pushed = push_fixture_images(emu)
        remote = make_remote(tmp_path, environments(emu.host))
        emu.malform_next(1, how, kind="tags_list")  # type: ignore[arg-type]
        async with Engine(google_config(emu, remote, tmp_path, "anonymous")) as watcher:
            report = await watcher.cycle()
            broken = emu.log[0].repository
            assert broken is not None
            assert [str(i) for i in report.failed_images] == [f"{emu.host}/{broken}"]
            reason = next(iter(report.failed_images.values()))
            assert "tags/list" in reason
            if how == "extension":
                assert "time is not a number" in reason
            events = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
            skipped = [e for e in events if e["event"] == "image skipped"]
            assert [e["image"] for e in skipped] == [f"{emu.host}/{broken}"]
            assert skipped[0]["reason"] == reason and skipped[0]["severity"] == "WARNING"
            # The other image went on.
            other = read_values(remote, "environment/b2b1", "apps/api/values.yaml")
            if broken == "team/api":
                assert other["web"]["shasum"] == pushed.web
            else:
                assert other["image"]["shasum"] == pushed.master
            report = await watcher.cycle()
            assert report.failed_images == {}
    other = read_values(remote, "environment/b2b1", "apps/api/values.yaml")
    assert other["web"]["shasum"] == pushed.web
    assert other["image"]["shasum"] == pushed.master


# --- Application Default Credentials through the metadata server --------------------------------


@pytest.fixture
def adc_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No key file, no gcloud config: ADC must find the metadata server."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.delenv("GCE_METADATA_ROOT", raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "false")
    gcloud = tmp_path / "gcloud-config"
    gcloud.mkdir()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(gcloud))
    monkeypatch.setenv("GCE_METADATA_TIMEOUT", "2")
    yield monkeypatch


def point_adc_at(monkeypatch: pytest.MonkeyPatch, emu: GoogleRegistryEmulator) -> None:
    from google.auth.compute_engine import _metadata

    monkeypatch.setenv("GCE_METADATA_HOST", emu.host)
    monkeypatch.setenv("GCE_METADATA_IP", emu.host)
    # google-auth reads GCE_METADATA_HOST once, when _metadata is first imported
    # (GCE_METADATA_IP at each ping); a process started with the variable set
    # (test_adc_found_through_the_environment_alone) needs nothing more.
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", emu.host)


def secrets_of(emu: GoogleRegistryEmulator) -> set[str]:
    """Every access token and registry token the emulator has issued (still live)."""
    return set(emu._access_tokens) | set(emu._tokens)


@pytest.mark.integration
async def test_adc_tokens_cached_refreshed_before_expiry_never_logged(
    mode: str, adc_env: pytest.MonkeyPatch, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    settings = EmulatorSettings(
        mode=mode,  # type: ignore[arg-type]
        metadata=True,
        # Lives long enough that a loaded machine's slow first cycle leaves the tokens of
        # cycle 1 fresh for cycle 2 (they are due 3 s and 7.5 s after they were fetched).
        metadata_token_ttl=10,  # refreshed 2.5 s before expiry (a quarter of its life)
        token_ttl=6.0,  # registry bearer token: replaced 3 s before expiry (half its life)
        access_tokens=set(),  # only what the metadata server issued opens the registry
    )
    async with GoogleRegistryEmulator(settings) as emu:
        point_adc_at(adc_env, emu)
        emu.push("team/api", "master")
        emu.push("team/web", "master")
        emu.push("team/api", SENTRY + "1111111")
        remote = make_remote(tmp_path, environments(emu.host))
        seen_tokens: set[str] = set()
        async with Engine(google_config(emu, remote, tmp_path, "google")) as watcher:
            cycles: list[dict[str, int]] = []
            paths: list[list[str]] = []
            # Every token of cycle 1 was fetched before `end`: cycle 2 at once, cycle 3
            # once the registry tokens are due, cycle 4 once the access token is.
            end = 0.0
            for start in (0.0, 0.0, 3.2, 7.8):
                if start:
                    # Scheduled: the tokens' ages at each cycle are the behaviour under test.
                    await asyncio.sleep(max(0.0, end + start - time.monotonic()))
                mark = len(emu.log)
                report = await watcher.cycle()
                seen_tokens |= secrets_of(emu)
                assert report.failed_images == {}, [*report.failed_images.values()]
                cycles.append(kinds(since(emu, mark)))
                end = end or time.monotonic()
                paths.append([e.path for e in since(emu, mark) if e.kind == "metadata"])
            assert watcher.lookups.google_tokens.refreshes == 2
    # 1: ADC finds the metadata server (ping, project id), gets the service account
    # and a token; the first listing of each image meets a 401 challenge once per
    # registry (the second image waits for it), then a token per image scope.
    assert paths[0][:2] == ["/", "/computeMetadata/v1/project/project-id"]
    assert paths[0][2:] == [
        "/computeMetadata/v1/instance/service-accounts/default/",
        "/computeMetadata/v1/instance/service-accounts/default/token",
    ]
    assert cycles[0] == {"metadata": 4, "tags_list": 3, "token": 2}
    assert emu.count("tags_list", status=401) == 1
    # 2: both tokens cached.
    assert cycles[1] == {"tags_list": 2}
    # 3: registry tokens due (6 s life), the access token (10 s life) still fresh.
    assert cycles[2] == {"token": 2, "tags_list": 2}
    # 4: the access token within its last quarter: refreshed before use, never sent stale.
    assert cycles[3] == {"metadata": 2, "token": 2, "tags_list": 2}
    assert emu.count("token", status=401) == 0
    assert emu.count(status=401) == 1
    # Nothing secret in any log line.
    text = captured_logs.getvalue()
    assert "cycle done" in text
    assert seen_tokens and not any(token in text for token in seen_tokens)


@pytest.mark.integration
async def test_adc_failure_skips_the_registry_not_the_cycle(
    adc_env: pytest.MonkeyPatch, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    settings = EmulatorSettings(metadata=True)
    async with GoogleRegistryEmulator(settings) as emu:
        point_adc_at(adc_env, emu)
        emu.push("team/api", "master")
        emu.push("team/web", "master")
        emu.fail_next(None, status=403, kind="metadata")
        remote = make_remote(tmp_path, environments(emu.host))
        heads = {b: remote.head(b) for b in remote.branches()}
        async with Engine(google_config(emu, remote, tmp_path, "google")) as watcher:
            watcher.lookups.google_tokens.failure_ttl = 0.3
            report = await watcher.cycle()
            assert set(map(str, report.failed_images)) == {
                f"{emu.host}/team/api",
                f"{emu.host}/team/web",
            }
            assert all(
                r.startswith("credentials: Google Application Default Credentials")
                for r in report.failed_images.values()
            )
            # One ADC attempt (one ping), shared by every image of the cycle.
            assert emu.count("metadata") == 1
            # The first listing went out bare and met the 401 challenge; no token was asked.
            assert emu.count("tags_list", status=401) == emu.count("tags_list") == 1
            assert emu.count("token") == 0
            assert {b: remote.head(b) for b in remote.branches()} == heads
            emu.clear_faults()
            await asyncio.sleep(0.3)  # the remembered failure expiring is the behaviour
            report = await watcher.cycle()
            assert report.failed_images == {}
    assert remote.head("environment/b2c1") != heads["environment/b2c1"]
    assert "image skipped" in captured_logs.getvalue()


@pytest.mark.integration
async def test_adc_found_through_the_environment_alone(
    adc_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fresh process with GCE_METADATA_HOST set: `watcher once` authenticates through ADC."""
    settings = EmulatorSettings(metadata=True, access_tokens=set())
    async with GoogleRegistryEmulator(settings) as emu:
        digest = emu.push("team/api", "master")
        emu.push("team/web", "master")
        remote = make_remote(tmp_path, environments(emu.host))
        config = tmp_path / "shards.yaml"
        config.write_text(
            f"""
interval: 1m
registries:
  - {{host: "{emu.host}", api: google, auth: google, insecure: true}}
git:
  url: {remote.url}
  branches: ["environment/*"]
  files: ["apps/*/values.yaml"]
  workdir: {tmp_path / "clone"}
"""
        )
        env = {**os.environ, "GCE_METADATA_HOST": emu.host, "GCE_METADATA_IP": emu.host}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watcher",
            "once",
            "--config",
            str(config),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        started = time.monotonic()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        tokens = secrets_of(emu)
    assert proc.returncode == 0, err.decode()
    assert time.monotonic() - started < 30
    assert "skipped image" not in out.decode(), out.decode()
    assert emu.count("metadata") >= 3 and emu.count("token", status=200) == 2
    assert (
        read_values(remote, "environment/b2b1", "apps/api/values.yaml")["image"]["shasum"] == digest
    )
    assert not any(token in out.decode() + err.decode() for token in tokens)


# --- the extension parser, on the recorded shapes ------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.unit
def test_both_time_encodings_read_alike() -> None:
    gcr, _ = facts_from_pages([fixture("gcr-tags-list.json")])
    artifact, _ = facts_from_pages([fixture("artifact-registry-tags-list.json")])
    shared = "sha256:400ee2ed939df769d4681023810d2e4fb9479b8401d97003c710d0e20f7c49c6"
    # Strings on GCR, integers on Artifact Registry: the same instant.
    assert gcr.times[shared] == artifact.times[shared] == 1597767277.119
    assert gcr.tags == {"another": shared, "latest": shared}
    assert artifact.tags["fixes_TECH-2783_bump_sentry-9d239fd"].startswith("sha256:067f")
    assert artifact.listed == frozenset(
        {"fixes_TECH-2783_bump_sentry-9d239fd", "master", "master-9d239fd"}
    )


@pytest.mark.unit
def test_bad_entries_are_left_out_with_reasons_bad_maps_refused() -> None:
    page = fixture("artifact-registry-tags-list.json")
    helm = "sha256:" + "1" * 64
    page["manifest"][helm] = {
        "mediaType": HELM,
        "tag": ["chart-9"],
        "timeUploadedMs": 1,
    }
    page["manifest"]["sha256:" + "2" * 64] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "tag": ["-starts-with-dash", "ok-tag", "x" * 129],
        "timeUploadedMs": "1700000000000",
    }
    page["manifest"]["md5:abc"] = {"tag": ["weird"]}
    page["tags"] += ["chart-9", "-starts-with-dash", "ok-tag"]
    facts, skipped = facts_from_pages([page])
    assert helm not in facts.times and "chart-9" not in facts.tags
    assert "chart-9" not in (facts.listed or ())  # a tag strategy cannot pick it
    assert "-starts-with-dash" not in (facts.listed or ())
    assert facts.tags["ok-tag"] == "sha256:" + "2" * 64
    assert any("is not an image" in reason for reason in skipped)
    assert any("'-starts-with-dash': tag breaks the OCI grammar" in r for r in skipped)
    assert any("not a sha256 digest" in reason for reason in skipped)

    broken_pages: list[dict[str, Any]] = [
        {"tags": []},  # no extension at all
        {"tags": [], "manifest": ["a"]},
        {"tags": [], "manifest": {helm: "entry"}},
        {"tags": [], "manifest": {helm: {"tag": "latest"}}},
        {"tags": [], "manifest": {helm: {"tag": [], "timeUploadedMs": "1.5e12"}}},
        {"tags": [], "manifest": {helm: {"tag": [], "timeUploadedMs": True}}},
    ]
    for broken in broken_pages:
        with pytest.raises(ExtensionError):
            facts_from_pages([broken])


@pytest.mark.unit
def test_a_media_type_that_is_not_a_string_leaves_its_entry_out() -> None:
    """Found by test_fuzz: ``{"mediaType": []}`` raised TypeError (unhashable) instead."""
    digest = "sha256:" + "0" * 64
    for odd in ([], {}, ["application/vnd.oci.image.manifest.v1+json"], 1):
        page = {"tags": ["t"], "manifest": {digest: {"mediaType": odd, "tag": ["t"]}}}
        facts, skipped = facts_from_pages([page])
        assert "t" not in facts.tags and "t" not in (facts.listed or ())
        assert any("is not an image" in reason for reason in skipped)


@pytest.mark.integration
async def test_metadata_server_answers_as_google_auth_expects() -> None:
    import aiohttp

    settings = EmulatorSettings(metadata=True, metadata_token_ttl=1, access_tokens=set())
    async with GoogleRegistryEmulator(settings) as emu, aiohttp.ClientSession() as session:
        flavor = {"Metadata-Flavor": "Google"}
        token_url = f"{emu.url}/computeMetadata/v1/instance/service-accounts/default/token"
        async with session.get(f"{emu.url}/") as ping:
            assert ping.status == 200 and ping.headers["Metadata-Flavor"] == "Google"
        async with session.get(token_url) as refused:
            assert refused.status == 403  # the request header is required
        async with session.get(token_url, headers=flavor) as answer:
            body = await answer.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 1
        registry_token = f"{emu.url}/v2/token?service={emu.service}&scope=repository:a:pull"
        basic = base64.b64encode(f"oauth2accesstoken:{body['access_token']}".encode()).decode()
        auth = {"Authorization": f"Basic {basic}"}
        async with session.get(registry_token, headers=auth) as accepted:
            assert accepted.status == 200
        await asyncio.sleep(1.05)  # the access token's life passing is the behaviour
        async with session.get(registry_token, headers=auth) as expired:
            assert expired.status == 401
    assert [e.kind for e in emu.log] == ["metadata"] * 3 + ["token"] * 2


@pytest.mark.integration
async def test_adc_from_a_service_account_key_file(
    adc_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Promise: a key file named by GOOGLE_APPLICATION_CREDENTIALS authenticates, unlogged.

    The key's ``token_uri`` points at the emulator's OAuth endpoint, which
    checks the JWT's signature against the account's public key, as Google's
    does; the watcher runs as a fresh process with only the environment set.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = EmulatorSettings(service_account_keys={"key-1": public_pem}, access_tokens=set())
    async with GoogleRegistryEmulator(settings) as emu:
        emu.push("team/api", "master")
        remote = make_remote(tmp_path, environments(emu.host))
        key_file = tmp_path / "key.json"
        key_file.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "emulator-project",
                    "private_key_id": "key-1",
                    "private_key": private_pem,
                    "client_email": "watcher@emulator-project.iam.gserviceaccount.com",
                    "client_id": "1",
                    "token_uri": f"{emu.url}/token",
                }
            )
        )
        config = tmp_path / "shards.yaml"
        config.write_text(
            f"""
registries:
  - {{host: "{emu.host}", api: google, auth: google, insecure: true}}
git: {{url: {remote.url}, files: ["apps/*/values.yaml"], workdir: {tmp_path / "clone"}}}
"""
        )
        env = {**os.environ, "GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watcher",
            "once",
            "--config",
            str(config),
            "--log-level",
            "debug",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        issued = set(emu._access_tokens) | set(emu._tokens)
        assert proc.returncode == 0, err.decode()
        assert emu.count("oauth") == 1
        assert emu.count("token", status=200) >= 1, (out.decode(), err.decode()[-3000:])
        assert "committed" in out.decode()
    digest = emu.resolve("team/api", "master")
    assert f"shasum: {digest}" in remote.read("environment/b2c1", "apps/api/values.yaml")
    assert issued
    for secret in issued | {private_pem.splitlines()[1]}:
        assert secret not in out.decode() and secret not in err.decode()
