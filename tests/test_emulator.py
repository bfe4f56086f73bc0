"""The Google-registry emulator, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest

from watcher_testing.emulator import (
    DEFAULT_ACCESS_TOKEN,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    EmulatorSettings,
    GoogleRegistryEmulator,
    max_in_window,
)
from watcher_testing.waiting import wait_until_async

# Copies of the shapes in shared/fixtures: real responses of the Google registries.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ALL_MANIFEST_TYPES = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def open_emulator(**settings: Any) -> GoogleRegistryEmulator:
    return GoogleRegistryEmulator(EmulatorSettings(**settings))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def get_token(
    session: aiohttp.ClientSession,
    emu: GoogleRegistryEmulator,
    scope: str | None,
    user: str = "oauth2accesstoken",
    password: str = DEFAULT_ACCESS_TOKEN,
) -> str:
    params = {"service": emu.service}
    if scope is not None:
        params["scope"] = scope
    async with session.get(
        f"{emu.url}/v2/token", params=params, headers={"Authorization": basic(user, password)}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["token"])


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[Any, aiohttp.ClientResponse]:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(), resp


# -- auth -----------------------------------------------------------------------------------


@pytest.mark.integration
async def test_ping_challenge_gcr(session: aiohttp.ClientSession) -> None:
    async with open_emulator(mode="gcr") as emu, session.get(f"{emu.url}/v2/") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == (
            f'Bearer realm="http://{emu.host}/v2/token",service="{emu.host}"'
        )
        body = await resp.json()
        assert body["errors"][0]["code"] == "UNAUTHORIZED"


@pytest.mark.integration
async def test_repository_challenge_carries_scope_and_artifact_omits_service(
    session: aiohttp.ClientSession,
) -> None:
    async with open_emulator(mode="artifact") as emu:
        emu.push("proj/app", "master")
        async with session.get(f"{emu.url}/v2/proj/app/tags/list") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == (
                f'Bearer realm="http://{emu.host}/v2/token",scope="repository:proj/app:pull"'
            )
    async with (
        open_emulator(mode="gcr", host="eu.gcr.io") as emu,
        session.head(f"{emu.url}/v2/proj/app/manifests/master") as resp,
    ):
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == (
            'Bearer realm="http://eu.gcr.io/v2/token",service="eu.gcr.io",'
            'scope="repository:proj/app:pull"'
        )


@pytest.mark.integration
@pytest.mark.parametrize("user", ["oauth2accesstoken", "_token"])
async def test_token_flow(session: aiohttp.ClientSession, user: str) -> None:
    async with open_emulator(token_ttl=120) as emu:
        emu.push("proj/app", "master")
        async with session.get(
            f"{emu.url}/v2/token",
            params={"service": emu.host, "scope": "repository:proj/app:pull"},
            headers={"Authorization": basic(user, DEFAULT_ACCESS_TOKEN)},
        ) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
        assert body["token"] == body["access_token"]
        assert body["expires_in"] == 120
        issued = datetime.fromisoformat(body["issued_at"].replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - issued).total_seconds()) < 5
        auth = {"Authorization": f"Bearer {body['token']}"}
        async with session.get(f"{emu.url}/v2/proj/app/tags/list", headers=auth) as resp:
            assert resp.status == 200
            assert (await resp.json())["tags"] == ["master"]
        async with session.get(f"{emu.url}/v2/", headers=auth) as resp:
            assert resp.status == 200
        assert emu.count("token") == 1


@pytest.mark.integration
@pytest.mark.parametrize(
    ("user", "password"),
    [("oauth2accesstoken", "wrong"), ("someone", DEFAULT_ACCESS_TOKEN)],
)
async def test_bad_credentials_are_refused(
    session: aiohttp.ClientSession, user: str, password: str
) -> None:
    async with open_emulator() as emu:
        async with session.get(
            f"{emu.url}/v2/token",
            params={"service": emu.host, "scope": "repository:proj/app:pull"},
            headers={"Authorization": basic(user, password)},
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
        assert emu.log[-1].kind == "token"
        assert emu.log[-1].status == 401


@pytest.mark.integration
async def test_anonymous_token_only_when_auth_not_required(
    session: aiohttp.ClientSession,
) -> None:
    url_tail = "/v2/token?service=x&scope=repository:proj/app:pull"
    async with open_emulator(auth_required=True) as emu, session.get(emu.url + url_tail) as resp:
        assert resp.status == 401
    async with open_emulator(auth_required=False) as emu:
        emu.push("proj/app", "master")
        async with session.get(emu.url + url_tail) as resp:
            assert resp.status == 200
            token = (await resp.json())["token"]
        async with session.get(
            f"{emu.url}/v2/proj/app/tags/list", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200


@pytest.mark.integration
async def test_anonymous_mode_serves_requests_without_token(
    session: aiohttp.ClientSession,
) -> None:
    async with open_emulator(auth_required=False) as emu:
        emu.push("proj/app", "master")
        async with session.get(f"{emu.url}/v2/") as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        body, _ = await get_json(session, f"{emu.url}/v2/proj/app/tags/list")
        assert body["tags"] == ["master"]
        # A bearer token that was never issued is still refused, as a registry would.
        async with session.get(
            f"{emu.url}/v2/proj/app/tags/list", headers={"Authorization": "Bearer made-up"}
        ) as resp:
            assert resp.status == 401


@pytest.mark.integration
async def test_token_expires(session: aiohttp.ClientSession) -> None:
    async with open_emulator(token_ttl=0.5) as emu:
        emu.push("proj/app", "master")
        token = await get_token(session, emu, "repository:proj/app:pull")
        auth = {"Authorization": f"Bearer {token}"}
        url = f"{emu.url}/v2/proj/app/tags/list"
        async with session.get(url, headers=auth) as resp:
            assert resp.status == 200
        await asyncio.sleep(0.6)  # the token's life passing is the behaviour under test
        async with session.get(url, headers=auth) as resp:
            assert resp.status == 401
            assert 'scope="repository:proj/app:pull"' in resp.headers["WWW-Authenticate"]


@pytest.mark.integration
async def test_token_is_scoped_to_its_repository(session: aiohttp.ClientSession) -> None:
    async with open_emulator() as emu:
        emu.push("proj/a", "master")
        emu.push("proj/b", "master")
        token = await get_token(session, emu, "repository:proj/a:pull")
        auth = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{emu.url}/v2/proj/a/tags/list", headers=auth) as resp:
            assert resp.status == 200
        async with session.get(f"{emu.url}/v2/proj/b/tags/list", headers=auth) as resp:
            assert resp.status == 401
            assert 'scope="repository:proj/b:pull"' in resp.headers["WWW-Authenticate"]
    async with open_emulator(enforce_scope=False) as emu:
        emu.push("proj/b", "master")
        token = await get_token(session, emu, "repository:proj/a:pull")
        async with session.get(
            f"{emu.url}/v2/proj/b/tags/list", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200


# -- tags/list --------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("mode", "fixture"),
    [("gcr", "gcr-tags-list.json"), ("artifact", "artifact-registry-tags-list.json")],
)
async def test_tags_list_shape_matches_fixture(
    session: aiohttp.ClientSession, mode: str, fixture: str
) -> None:
    expected = json.loads((FIXTURES / fixture).read_text())
    expected_entry = next(iter(expected["manifest"].values()))
    created = datetime(2020, 7, 28, 0, 19, 37, 54000, tzinfo=UTC)
    uploaded = datetime(2020, 8, 18, 16, 14, 37, 119000, tzinfo=UTC)
    async with open_emulator(mode=mode, auth_required=False) as emu:
        tagged = emu.push(
            "proj/dev/app", "master", kind="docker", created=created, uploaded=uploaded, size=763789
        )
        emu.retag("proj/dev/app", "master-9d239fd", tagged)
        untagged = emu.push("proj/dev/app", None)
        body, resp = await get_json(session, f"{emu.url}/v2/proj/dev/app/tags/list")
        assert resp.headers["Content-Type"].startswith("application/json")
    assert list(body) == list(expected)  # child, manifest, name, tags: same keys, same order
    assert body["child"] == []
    assert body["name"] == "proj/dev/app"
    assert body["tags"] == ["master", "master-9d239fd"]
    assert set(body["manifest"]) == {tagged, untagged}
    for entry in body["manifest"].values():
        assert list(entry) == list(expected_entry)
        assert {k: type(v) for k, v in entry.items()} == {
            k: type(v) for k, v in expected_entry.items()
        }
    entry = body["manifest"][tagged]
    assert entry["tag"] == ["master", "master-9d239fd"]
    assert entry["mediaType"] == DOCKER_MANIFEST
    assert entry["imageSizeBytes"] == "763789"
    assert int(entry["timeCreatedMs"]) == 1595895577054
    assert int(entry["timeUploadedMs"]) == 1597767277119
    assert body["manifest"][untagged]["tag"] == []


@pytest.mark.integration
async def test_tags_list_children_and_unknown_names(session: aiohttp.ClientSession) -> None:
    async with open_emulator(auth_required=False) as emu:
        emu.push("proj/app", "master")
        emu.push("proj/app/sub", "master")
        emu.push("proj/app/deep/er", "v1")
        emu.push("proj/other", "v1")
        body, _ = await get_json(session, f"{emu.url}/v2/proj/app/tags/list")
        assert body["child"] == ["deep", "sub"]
        assert body["tags"] == ["master"]
        # A path that only holds repositories lists its children and no tags.
        body, _ = await get_json(session, f"{emu.url}/v2/proj/tags/list")
        assert body == {"child": ["app", "other"], "manifest": {}, "name": "proj", "tags": []}
        async with session.get(f"{emu.url}/v2/nope/tags/list") as resp:
            assert resp.status == 404
            assert (await resp.json())["errors"][0]["code"] == "NAME_UNKNOWN"


@pytest.mark.integration
async def test_pagination_follows_relative_link(session: aiohttp.ClientSession) -> None:
    async with open_emulator(auth_required=False) as emu:
        shared = emu.push("proj/app", "b")
        emu.retag("proj/app", "c", shared)  # one digest whose tags span pages 1 and 2
        for tag in ("a", "d", "e"):
            emu.push("proj/app", tag)
        untagged = emu.push("proj/app", None)
        full, resp = await get_json(session, f"{emu.url}/v2/proj/app/tags/list")
        assert "Link" not in resp.headers
        url = f"{emu.url}/v2/proj/app/tags/list?n=2"
        pages: list[dict[str, Any]] = []
        links: list[str] = []
        while True:
            body, resp = await get_json(session, url)
            pages.append(body)
            if "Link" not in resp.headers:
                break
            links.append(resp.headers["Link"])
            match = re.fullmatch(r'<([^>]+)>; rel="next"', resp.headers["Link"])
            assert match is not None
            url = urljoin(url, match[1])
    assert links == [
        '</v2/proj/app/tags/list?n=2&last=b>; rel="next"',
        '</v2/proj/app/tags/list?n=2&last=d>; rel="next"',
    ]
    assert [p["tags"] for p in pages] == [["a", "b"], ["c", "d"], ["e"]]
    merged: dict[str, Any] = {}
    for page in pages:
        for digest, entry in page["manifest"].items():
            assert merged.setdefault(digest, entry) == entry
    assert merged == full["manifest"]
    assert shared in pages[0]["manifest"] and shared in pages[1]["manifest"]
    assert pages[0]["manifest"][shared]["tag"] == ["b", "c"]
    assert untagged in pages[0]["manifest"]
    assert all(untagged not in p["manifest"] for p in pages[1:])


@pytest.mark.integration
async def test_page_size_max_caps_n_and_default_pages(session: aiohttp.ClientSession) -> None:
    async with open_emulator(auth_required=False, page_size_max=2) as emu:
        for tag in ("a", "b", "c"):
            emu.push("proj/app", tag)
        body, resp = await get_json(session, f"{emu.url}/v2/proj/app/tags/list")
        assert body["tags"] == ["a", "b"]
        assert resp.headers["Link"] == '</v2/proj/app/tags/list?n=2&last=b>; rel="next"'
        body, resp = await get_json(session, f"{emu.url}/v2/proj/app/tags/list?n=50")
        assert body["tags"] == ["a", "b"]
        body, resp = await get_json(session, f"{emu.url}/v2/proj/app/tags/list?n=2&last=b")
        assert body["tags"] == ["c"]
        assert "Link" not in resp.headers
        async with session.get(f"{emu.url}/v2/proj/app/tags/list?n=x") as bad:
            assert bad.status == 400
            assert (await bad.json())["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


@pytest.mark.integration
async def test_manifest_paging_full_sends_whole_map(session: aiohttp.ClientSession) -> None:
    async with open_emulator(auth_required=False, manifest_paging="full") as emu:
        digests = {emu.push("proj/app", tag) for tag in ("a", "b", "c")}
        body, _ = await get_json(session, f"{emu.url}/v2/proj/app/tags/list?n=1&last=b")
        assert body["tags"] == ["c"]
        assert set(body["manifest"]) == digests


# -- manifests and blobs ------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("kind", "media_type"),
    [
        ("oci", OCI_MANIFEST),
        ("docker", DOCKER_MANIFEST),
        ("index", OCI_INDEX),
        ("list", DOCKER_LIST),
    ],
)
async def test_manifest_head_and_get(
    session: aiohttp.ClientSession, kind: Any, media_type: str
) -> None:
    async with open_emulator(auth_required=False) as emu:
        digest = emu.push("proj/app", "master", kind=kind)
        headers = {"Accept": ALL_MANIFEST_TYPES}
        url = f"{emu.url}/v2/proj/app/manifests/master"
        async with session.head(url, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == digest
            assert resp.headers["Content-Type"] == media_type
            head_length = int(resp.headers["Content-Length"])
            assert await resp.read() == b""
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200
            body = await resp.read()
            assert resp.headers["Docker-Content-Digest"] == digest
            assert int(resp.headers["Content-Length"]) == len(body) == head_length
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        document = json.loads(body)
        assert document["mediaType"] == media_type
        assert document["schemaVersion"] == 2
        async with session.get(f"{emu.url}/v2/proj/app/manifests/{digest}") as resp:
            assert resp.status == 200
            assert await resp.read() == body
        if kind in ("index", "list"):
            # The platform images are stored (untagged) and served by digest.
            for child in document["manifests"]:
                async with session.get(
                    f"{emu.url}/v2/proj/app/manifests/{child['digest']}"
                ) as resp:
                    data = await resp.read()
                    assert "sha256:" + hashlib.sha256(data).hexdigest() == child["digest"]
                    assert child["size"] == len(data)
        assert [e.kind for e in emu.log][:2] == ["manifest_head", "manifest_get"]


@pytest.mark.integration
async def test_index_served_whatever_accept_unless_strict(session: aiohttp.ClientSession) -> None:
    plain = {"Accept": DOCKER_MANIFEST}
    async with open_emulator(auth_required=False) as emu:
        index = emu.push("proj/app", "master", kind="index")
        async with session.head(f"{emu.url}/v2/proj/app/manifests/master", headers=plain) as resp:
            assert resp.headers["Docker-Content-Digest"] == index
    async with open_emulator(auth_required=False, strict_accept=True) as emu:
        emu.push("proj/app", "oci", kind="index")
        emu.push("proj/app", "list", kind="list")
        async with session.get(f"{emu.url}/v2/proj/app/manifests/oci", headers=plain) as resp:
            assert resp.status == 404
            assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        async with session.get(f"{emu.url}/v2/proj/app/manifests/list", headers=plain) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == DOCKER_MANIFEST
            body = await resp.read()
        config = json.loads(body)["config"]["digest"]
        async with session.get(f"{emu.url}/v2/proj/app/blobs/{config}") as resp:
            assert json.loads(await resp.read())["architecture"] == "amd64"
        full = {"Accept": ALL_MANIFEST_TYPES}
        async with session.get(f"{emu.url}/v2/proj/app/manifests/oci", headers=full) as resp:
            assert resp.headers["Content-Type"] == OCI_INDEX


@pytest.mark.integration
async def test_not_found_shapes(session: aiohttp.ClientSession) -> None:
    async with open_emulator(auth_required=False) as emu:
        emu.push("proj/app", "master")
        missing = "sha256:" + "0" * 64
        cases = [
            ("/v2/proj/app/manifests/nope", "MANIFEST_UNKNOWN"),
            (f"/v2/proj/app/manifests/{missing}", "MANIFEST_UNKNOWN"),
            ("/v2/proj/gone/manifests/master", "NAME_UNKNOWN"),
            (f"/v2/proj/app/blobs/{missing}", "BLOB_UNKNOWN"),
            (f"/v2/proj/gone/blobs/{missing}", "NAME_UNKNOWN"),
        ]
        for path, code in cases:
            async with session.get(emu.url + path) as resp:
                assert resp.status == 404, path
                assert resp.headers["Content-Type"].startswith("application/json")
                body = await resp.json()
                assert body["errors"][0]["code"] == code, path
                assert isinstance(body["errors"][0]["message"], str)
        async with session.head(f"{emu.url}/v2/proj/app/manifests/nope") as resp:
            assert resp.status == 404


@pytest.mark.integration
async def test_config_blob_carries_created(session: aiohttp.ClientSession) -> None:
    created = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    async with open_emulator(auth_required=False) as emu:
        emu.push("proj/app", "master", kind="docker", created=created)
        async with session.get(f"{emu.url}/v2/proj/app/manifests/master") as resp:
            config = json.loads(await resp.read())["config"]
        async with session.get(f"{emu.url}/v2/proj/app/blobs/{config['digest']}") as resp:
            assert resp.status == 200
            blob = await resp.read()
            assert resp.headers["Docker-Content-Digest"] == config["digest"]
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == config["digest"]
        assert len(blob) == config["size"]
        assert json.loads(blob)["created"] == "2021-03-04T05:06:07Z"
        assert emu.count("blob") == 1


# -- images changed in-process ------------------------------------------------------------------


@pytest.mark.integration
async def test_push_retag_untag_delete_visible(session: aiohttp.ClientSession) -> None:
    url_tail = "/v2/proj/app/tags/list"
    async with open_emulator(auth_required=False) as emu:

        async def listing() -> dict[str, Any]:
            body, _ = await get_json(session, emu.url + url_tail)
            return dict(body)

        first = emu.push("proj/app", "master")
        second = emu.push("proj/app", "master")  # a new build moves the tag
        assert first != second
        body = await listing()
        assert body["tags"] == ["master"]
        assert body["manifest"][first]["tag"] == []
        assert body["manifest"][second]["tag"] == ["master"]

        emu.retag("proj/app", "stable", first)
        body = await listing()
        assert body["tags"] == ["master", "stable"]
        assert body["manifest"][first]["tag"] == ["stable"]
        assert emu.resolve("proj/app", "stable") == first

        emu.untag("proj/app", "stable")
        body = await listing()
        assert body["tags"] == ["master"]
        assert body["manifest"][first]["tag"] == []

        emu.delete("proj/app", second)
        body = await listing()
        assert body["tags"] == []
        assert list(body["manifest"]) == [first]
        async with session.get(f"{emu.url}/v2/proj/app/manifests/master") as resp:
            assert resp.status == 404

        emu.delete("proj/app", first)
        async with session.get(emu.url + url_tail) as resp:
            assert resp.status == 404
        with pytest.raises(KeyError):
            emu.retag("proj/app", "x", first)
        with pytest.raises(ValueError):
            emu.push("proj/App", "master")
        with pytest.raises(ValueError):
            emu.push("proj/app", "-bad")


# -- quota and the request log ----------------------------------------------------------------


@pytest.mark.integration
async def test_quota_429_without_retry_after(session: aiohttp.ClientSession) -> None:
    async with open_emulator(quota_requests=3, quota_window=60) as emu:
        emu.push("proj/app", "master")
        token = await get_token(session, emu, "repository:proj/app:pull")  # counts too
        auth = {"Authorization": f"Bearer {token}"}
        statuses = []
        for _ in range(4):
            async with session.get(f"{emu.url}/v2/proj/app/tags/list", headers=auth) as resp:
                statuses.append(resp.status)
                text = await resp.text()
                retry_after = resp.headers.get("Retry-After")
        assert statuses == [200, 200, 429, 429]
        assert text == "Quota Exceeded."
        assert retry_after is None
        assert [(e.kind, e.status) for e in emu.log] == [
            ("token", 200),
            ("tags_list", 200),
            ("tags_list", 200),
            ("tags_list", 429),
            ("tags_list", 429),
        ]
        assert emu.count(status=429) == 2
        assert emu.count("tags_list", "proj/app") == 4


@pytest.mark.integration
async def test_quota_429_with_retry_after_and_window_slides(
    session: aiohttp.ClientSession,
) -> None:
    async with open_emulator(
        auth_required=False, quota_requests=2, quota_window=0.5, retry_after=1.5
    ) as emu:
        url = f"{emu.url}/v2/"
        for expected in (200, 200, 429):
            async with session.get(url) as resp:
                assert resp.status == expected
                text = await resp.text()
        assert resp.headers["Retry-After"] == "2"
        assert text == "Quota Exceeded."
        await asyncio.sleep(0.55)  # the window sliding past is the behaviour under test
        async with session.get(url) as resp:
            assert resp.status == 200
        assert emu.count("ping", status=429) == 1


@pytest.mark.integration
async def test_quota_is_per_client_ip(session: aiohttp.ClientSession) -> None:
    async with open_emulator(auth_required=False, quota_requests=1, quota_window=60) as emu:
        async with session.get(f"{emu.url}/v2/") as resp:
            assert resp.status == 200
        async with session.get(f"{emu.url}/v2/") as resp:
            assert resp.status == 429
        other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=other) as replica,
            replica.get(f"{emu.url}/v2/") as resp,
        ):
            assert resp.status == 200
        assert {e.client for e in emu.log} == {"127.0.0.1", "127.0.0.2"}
        assert emu.max_in_window(60, client="127.0.0.2") == 1


@pytest.mark.integration
async def test_quota_counting_rejected_requests_keeps_client_locked_out(
    session: aiohttp.ClientSession,
) -> None:
    async with open_emulator(
        auth_required=False, quota_requests=2, quota_window=0.4, quota_counts_rejected=True
    ) as emu:
        statuses = []
        for _ in range(8):
            async with session.get(f"{emu.url}/v2/") as resp:
                statuses.append(resp.status)
            await asyncio.sleep(0.1)  # spacing: requests keep coming within each window
        assert statuses[:2] == [200, 200]
        assert statuses[3:] == [429] * 5


def blocking_get(url: str) -> tuple[float, int]:
    """(when it was sent, status): a client of its own, not on the emulator's loop."""
    sent = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return sent, int(resp.status)
    except urllib.error.HTTPError as exc:
        return sent, exc.code


@pytest.mark.integration
async def test_quota_counts_a_request_when_it_arrives_not_when_the_loop_reaches_it() -> None:
    # Google counts a request when it reaches its frontend. A request that waited in the
    # socket while the emulator's loop was held up (a loaded machine) arrived when it
    # was sent: counted at the handler's time instead, the first request below would
    # share a window with the two sent 0.75 s later, and the last would get a 429.
    async with open_emulator(auth_required=False, quota_requests=2, quota_window=0.5) as emu:
        url = f"{emu.url}/v2/"
        # Submitted to the thread now, not once this loop runs again.
        first = asyncio.get_running_loop().run_in_executor(None, blocking_get, url)
        stalled_at = time.monotonic()
        time.sleep(0.4)  # noqa: ASYNC251 -- the stall under test: this loop serves the emulator
        early_sent, early_status = await first
        assert early_sent < stalled_at + 0.4, "the first request was sent during the stall"
        await asyncio.sleep(max(0.0, stalled_at + 0.75 - time.monotonic()))
        later = [await asyncio.to_thread(blocking_get, url) for _ in range(2)]
        assert [early_status] + [status for _, status in later] == [200, 200, 200]
        assert abs(emu.log[0].monotonic - early_sent) < 0.05
        assert emu.max_in_window(0.5) == 2


@pytest.mark.unit
def test_max_in_window_function() -> None:
    times = [0.0, 0.1, 0.2, 1.0, 1.05, 1.1, 1.15]
    assert max_in_window(times, 0.5) == 4
    assert max_in_window(times, 1.0) == 5  # [0.2, 1.2): the window starting at 0 excludes 1.0
    assert max_in_window(times, 10) == 7
    assert max_in_window([], 1) == 0
    rng = random.Random(7)
    for _ in range(200):
        sample = [rng.uniform(0, 5) for _ in range(rng.randint(0, 30))]
        window = rng.uniform(0.01, 3)
        brute = max((sum(1 for u in sample if 0 <= u - t < window) for t in sample), default=0)
        assert max_in_window(rng.sample(sample, len(sample)), window) == brute


@pytest.mark.integration
async def test_log_records_kinds_and_max_in_window(session: aiohttp.ClientSession) -> None:
    async with open_emulator() as emu:
        emu.push("proj/app", "master", kind="docker")
        async with session.get(f"{emu.url}/v2/") as resp:
            assert resp.status == 401
        token = await get_token(session, emu, "repository:proj/app:pull", user="_token")
        auth = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{emu.url}/v2/proj/app/tags/list", headers=auth):
            pass
        async with session.head(f"{emu.url}/v2/proj/app/manifests/master", headers=auth):
            pass
        async with session.get(f"{emu.url}/v2/proj/app/manifests/master", headers=auth) as resp:
            config = json.loads(await resp.read())["config"]["digest"]
        mark = time.monotonic()
        async with session.get(f"{emu.url}/v2/proj/app/blobs/{config}", headers=auth):
            pass
        assert [(e.kind, e.status, e.method) for e in emu.log] == [
            ("ping", 401, "GET"),
            ("token", 200, "GET"),
            ("tags_list", 200, "GET"),
            ("manifest_head", 200, "HEAD"),
            ("manifest_get", 200, "GET"),
            ("blob", 200, "GET"),
        ]
        assert all(e.client == "127.0.0.1" for e in emu.log)
        assert emu.log[2].path == "/v2/proj/app/tags/list"
        assert emu.log[2].repository == "proj/app"
        assert emu.log[1].query.startswith("service=")
        assert all(abs(e.wall - time.time()) < 10 for e in emu.log)
        assert emu.count() == 6
        assert emu.count(path="proj/app") == 4
        assert emu.count(path="/v2/") == 1
        assert emu.count(since=mark) == 1
        assert emu.max_in_window(60) == 6
        span = emu.log[-1].monotonic - emu.log[0].monotonic
        assert emu.max_in_window(span / 2) < 6
        emu.clear_log()
        assert emu.count() == 0
        assert emu.max_in_window(60) == 0


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.integration
async def test_fault_latency(session: aiohttp.ClientSession) -> None:
    async with open_emulator(auth_required=False) as emu:
        emu.faults.latency = 0.3
        start = time.monotonic()
        async with session.get(f"{emu.url}/v2/") as resp:
            assert resp.status == 200
        assert time.monotonic() - start >= 0.3
        emu.clear_faults()
        start = time.monotonic()
        async with session.get(f"{emu.url}/v2/") as resp:
            assert resp.status == 200
        assert time.monotonic() - start < 0.3


@pytest.mark.integration
async def test_fault_fail_next_burst(session: aiohttp.ClientSession) -> None:
    async with open_emulator(auth_required=False, retry_after=3) as emu:
        emu.push("proj/app", "master")
        emu.fail_next(2, 503, kind="tags_list")
        url = f"{emu.url}/v2/proj/app/tags/list"
        async with session.get(f"{emu.url}/v2/") as resp:
            assert resp.status == 200  # another kind is not affected
        statuses = []
        for _ in range(3):
            async with session.get(url) as resp:
                statuses.append(resp.status)
        assert statuses == [503, 503, 200]
        emu.fail_next(1, 500)
        async with session.get(f"{emu.url}/v2/") as resp:
            assert resp.status == 500
        emu.fail_next(1, 429)  # an injected throttle looks like the real one
        async with session.get(url) as resp:
            assert resp.status == 429
            assert await resp.text() == "Quota Exceeded."
            assert resp.headers["Retry-After"] == "3"
        emu.fail_next(None, 502)
        for _ in range(3):
            async with session.get(url) as resp:
                assert resp.status == 502
        emu.clear_faults()
        async with session.get(url) as resp:
            assert resp.status == 200
        assert emu.count("tags_list", status=503) == 2


@pytest.mark.integration
async def test_fault_hang_outlasts_client_timeout(session: aiohttp.ClientSession) -> None:
    async with open_emulator(auth_required=False) as emu:
        emu.hang_next(1, seconds=30)
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(
                f"{emu.url}/v2/", timeout=aiohttp.ClientTimeout(total=0.3)
            ) as resp:
                await resp.read()
        async with session.get(f"{emu.url}/v2/") as resp:
            assert resp.status == 200
        assert emu.log[0].status is None  # still held when the client gave up
        emu.hang_next(1, seconds=30)
        task = asyncio.create_task(session.get(f"{emu.url}/v2/"))
        await wait_until_async(lambda: not emu._pending, 10, what="the request to be held")
        start = time.monotonic()
    # Stopping hangs up on held requests instead of waiting for them.
    assert time.monotonic() - start < 2
    with pytest.raises(aiohttp.ClientError):
        await task


@pytest.mark.integration
@pytest.mark.parametrize("how", ["truncated", "garbage"])
async def test_fault_malformed_tags_list(session: aiohttp.ClientSession, how: Any) -> None:
    async with open_emulator(auth_required=False) as emu:
        emu.push("proj/app", "master")
        emu.malform_next(1, how)
        url = f"{emu.url}/v2/proj/app/tags/list"
        async with session.head(f"{emu.url}/v2/proj/app/manifests/master") as resp:
            assert resp.status == 200  # only tags/list is corrupted by default
        async with session.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/json")
            raw = await resp.read()
            assert int(resp.headers["Content-Length"]) == len(raw)
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
        if how == "truncated":
            assert raw.startswith(b'{"child": [')
        body, _ = await get_json(session, url)
        assert body["tags"] == ["master"]


@pytest.mark.integration
async def test_fault_drop_connection(session: aiohttp.ClientSession) -> None:
    async with open_emulator(auth_required=False) as emu:
        url = f"{emu.url}/v2/"
        emu.drop_next(2)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.get(url) as resp:
                await resp.read()
        # aiohttp's client resends an idempotent request once when the server hangs up,
        # so one call on the client is two requests at the registry.
        assert [(e.kind, e.status) for e in emu.log] == [("ping", None), ("ping", None)]
        emu.drop_next(1)
        async with session.get(url) as resp:
            assert resp.status == 200
        assert [e.status for e in emu.log[2:]] == [None, 200]


# -- standalone -------------------------------------------------------------------------------


@pytest.mark.integration
async def test_standalone_main_serves(session: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher_testing.emulator",
        "--mode",
        "artifact",
        "--anonymous",
        "--push",
        "proj/app:master:index",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines = []
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, "the emulator exited early"
            lines.append(line)
            if " on http://" in line:
                break
        url = lines[-1].rsplit(" ", 1)[1].strip()
        pushed_digest = lines[0].split()[-1]
        body, _ = await get_json(session, f"{url}/v2/proj/app/tags/list")
        assert body["tags"] == ["master"]
        assert body["manifest"][pushed_digest]["mediaType"] == OCI_INDEX
        assert isinstance(body["manifest"][pushed_digest]["timeUploadedMs"], int)
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


@pytest.mark.integration
async def test_restart_keeps_port_and_images(session: aiohttp.ClientSession) -> None:
    emu = open_emulator(auth_required=False)
    async with emu:
        digest = emu.push("proj/app", "master")
        url = emu.url
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(f"{url}/v2/"):
            pass
    async with emu:
        assert emu.url == url
        body, _ = await get_json(session, f"{url}/v2/proj/app/tags/list")
        assert list(body["manifest"]) == [digest]
