"""Running it in a cluster, shown on real parts: metrics, dashboard queries, logs, readiness.

One scenario (module fixture ``observed``) runs the daemon, ``python -m watcher
run``, as a subprocess against the Google-registry emulator (GCR mode, token
auth with a secret OAuth access token passed as ``basic`` credentials through
the environment) and a bare git remote with two environment branches, while
Debian's ``prometheus`` scrapes it every second. During the run a new build is
pushed (a second round of updates with an old value) and one 429 is injected
(throttling series). The tests then check what an SRE would rely on:

- ``promtool check metrics`` on the raw ``/metrics`` scrape reports nothing;
- every dashboard panel's query (helm/dashboard/generate.py) succeeds through
  Prometheus's HTTP API, and the budget, request, throttling and shard panels
  return data;
- every log line on stdout is JSON with ``severity`` and ``event``, with the
  bound context, and no credential appears in any log line or in the scrape;
- ``/readyz`` is 503 with a reason until the first discovery, then 200;
  with an unreachable git remote the daemon stays up, ``/healthz`` 200 and
  ``/readyz`` 503 naming git.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from tests.conftest import GitRemote, RedisServer, free_port, make_remote
from tests.helm_support import load_generator, require_binary
from watcher import logs
from watcher.cluster.connection import connect
from watcher.cluster.membership import Membership
from watcher.config import load_text
from watcher.engine import Engine
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator
from watcher_testing.waiting import wait_until_async

JOB = "image-watcher"
# The secret OAuth access token the emulator's token endpoint accepts.
ACCESS_TOKEN = "ya29.observability-" + "s3cr3t" * 6
USER_ENV = "OBS_REGISTRY_USER"
PASSWORD_ENV = "OBS_REGISTRY_TOKEN"
RATE_INTERVAL = "10s"
# How long Prometheus scrapes at most; the scenario ends earlier once it has what it needs.
# Deadlines for what the daemon and Prometheus do on their own: generous, since a
# loaded machine is slow and waiting only lasts as long as it takes.
SCRAPE_BUDGET = 60.0
STARTED_WITHIN = 60.0
MIN_SCRAPES = 8
SEVERITIES = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}

VALUES = """\
api:
  image:
    repository: {host}/team/api
    tag: master
web:
  image:
    repository: {host}/team/web
    tag: master
worker:
  image:
    repository: {host}/team/api
    tag: master
    watch: {{strategy: newest, tags: 'build-[0-9]+'}}
"""


# --- the scenario ----------------------------------------------------------------------------


@dataclass
class Observed:
    log_lines: list[str]
    stderr: str
    scrape: str
    readyz: list[tuple[int, str]]  # every /readyz answer from start to first 200
    scrapes: int  # scrapes Prometheus made of the daemon
    results: list[tuple[str, str, dict[str, Any]]]  # (panel title, query as sent, API answer)
    secrets: set[str] = field(default_factory=set)
    landed: bool = False  # the second round (new builds) reached both branches
    exit_code: int | None = None
    seconds: float = 0.0


def daemon_config(path: Path, registry: str, remote: GitRemote, git_url: str, port: int) -> Path:
    path.write_text(
        f"""
shards: 4
interval: 1s
limits:
  gcr: {{requests: 1000, per: 1m, headroom: 5%}}
registries:
  - host: "{registry}"
    api: google
    auth: basic
    username_env: {USER_ENV}
    password_env: {PASSWORD_ENV}
    insecure: true
    limit: gcr
git:
  url: {git_url}
  branches: ["environment/*"]
  files: ["apps/*/values.yaml"]
  author: {{name: image-watcher, email: watcher@example.com}}
  workdir: {path.parent / "clone"}
server: {{port: {port}}}
"""
    )
    return path


async def start_daemon(config: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        USER_ENV: "oauth2accesstoken",
        PASSWORD_ENV: ACCESS_TOKEN,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        "run",
        "--config",
        str(config),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_lines(stream: asyncio.StreamReader | None, into: list[str]) -> None:
    assert stream is not None
    while line := await stream.readline():
        into.append(line.decode())


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


def start_prometheus(tmp_path: Path, target_port: int, port: int) -> subprocess.Popen[bytes]:
    binary = require_binary("prometheus", "prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: {JOB}
    static_configs: [{{targets: ["127.0.0.1:{target_port}"]}}]
"""
    )
    out = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - the process holds it
    return subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            "--storage.tsdb.retention.time=1h",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )


async def get(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, str]:
    try:
        async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(2)) as response:
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


async def promql(session: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with session.get(f"{base}/api/v1/query", params={"query": expr}) as response:
        answer: dict[str, Any] = await response.json()
        return answer


async def instant_value(session: aiohttp.ClientSession, base: str, expr: str) -> float:
    answer = await promql(session, base, expr)
    result = answer.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else 0.0


def dashboard_queries() -> list[tuple[str, str]]:
    """Each panel's (title, PromQL) with the Grafana variables filled in."""
    out = []
    for title, expr in load_generator().panel_queries():
        expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$job", JOB)
        assert "$" not in expr, f"{title}: a Grafana variable is left in {expr}"
        out.append((title, expr))
    return out


async def scenario(tmp_path: Path) -> Observed:
    started = time.monotonic()
    settings = EmulatorSettings(mode="gcr", access_tokens={ACCESS_TOKEN}, retry_after=1)
    async with GoogleRegistryEmulator(settings) as emu:
        first_master = emu.push("team/api", "master", kind="index")
        emu.push("team/api", "build-1")
        web = emu.push("team/web", "master", kind="docker")
        values = VALUES.format(host=emu.host)
        remote = make_remote(
            tmp_path,
            {
                "environment/b2c1": {"apps/shop/values.yaml": values},
                "environment/b2b1": {"apps/shop/values.yaml": values},
            },
        )
        port, prom_port = free_port(), free_port()
        config = daemon_config(tmp_path / "shards.yaml", emu.host, remote, remote.url, port)
        daemon = await start_daemon(config)
        prometheus = start_prometheus(tmp_path, port, prom_port)
        out: list[str] = []
        err: list[str] = []
        readers = [
            asyncio.create_task(read_lines(daemon.stdout, out)),
            asyncio.create_task(read_lines(daemon.stderr, err)),
        ]
        base = f"http://127.0.0.1:{port}"
        prom = f"http://127.0.0.1:{prom_port}"
        readyz: list[tuple[int, str]] = []
        results: list[tuple[str, str, dict[str, Any]]] = []
        scrapes = 0
        scrape = ""
        landed = False
        secrets = {
            ACCESS_TOKEN,
            base64.b64encode(f"oauth2accesstoken:{ACCESS_TOKEN}".encode()).decode(),
        }
        try:
            async with aiohttp.ClientSession() as session:
                # /readyz from the moment the server answers until the daemon is ready.
                deadline = time.monotonic() + STARTED_WITHIN
                while not readyz or readyz[-1][0] != 200:
                    assert daemon.returncode is None, "".join(err)
                    assert time.monotonic() < deadline, f"never ready: {readyz[-3:]}"
                    status, text = await get(session, f"{base}/readyz")
                    if status:
                        readyz.append((status, text))
                    await asyncio.sleep(0.02)  # sampling: every answer until ready is kept
                # The first round of updates, every block on both branches.
                await wait_until_async(
                    lambda: landed_on_both(remote, first_master, "build-1", web),
                    STARTED_WITHIN,
                    interval=0.1,
                    what=lambda: "the first updates: " + "".join(out[-8:] + err[-8:]),
                )
                # A developer pushes new builds; the registry throttles once.
                new_master = emu.push("team/api", "master", kind="index")
                emu.push("team/api", "build-2")
                emu.fail_next(1, status=429, kind="tags_list")
                # Let Prometheus scrape the daemon at work.
                until = time.monotonic() + SCRAPE_BUDGET
                await wait_until_async(
                    lambda: prometheus_ready(session, prom),
                    SCRAPE_BUDGET,
                    interval=0.1,
                    what="prometheus to start",
                )
                while time.monotonic() < until:
                    scrapes = int(
                        await instant_value(
                            session, prom, f'count_over_time(up{{job="{JOB}"}}[1m])'
                        )
                    )
                    throttled = await instant_value(
                        session, prom, "sum(image_watcher_registry_throttled_total)"
                    )
                    landed = landed_on_both(remote, new_master, "build-2", web)
                    if scrapes >= MIN_SCRAPES and throttled >= 1 and landed:
                        break
                    await asyncio.sleep(0.5)  # sampling what Prometheus has seen so far
                status, scrape = await get(session, f"{base}/metrics")
                assert status == 200
                for title, expr in dashboard_queries():
                    results.append((title, expr, await promql(session, prom, expr)))
                # Every registry bearer token the emulator issued during the run.
                secrets |= set(emu._tokens)
        finally:
            code = await stop(daemon)
            await asyncio.gather(*readers)
            prometheus.terminate()
            try:
                prometheus.wait(10)
            except subprocess.TimeoutExpired:
                prometheus.kill()
    return Observed(
        log_lines=out,
        stderr="".join(err),
        scrape=scrape,
        readyz=readyz,
        scrapes=scrapes,
        results=results,
        secrets=secrets,
        exit_code=code,
        landed=landed,
        seconds=time.monotonic() - started,
    )


def landed_on_both(remote: GitRemote, master: str, build: str, web: str) -> bool:
    """Both environment branches hold these values (the digests and the followed build)."""
    for branch in ("environment/b2c1", "environment/b2b1"):
        text = remote.read(branch, "apps/shop/values.yaml")
        if text.count(master) != 1 or f"overrideTag: {build}" not in text or web not in text:
            return False
    return True


async def prometheus_ready(session: aiohttp.ClientSession, prom: str) -> bool:
    status, _ = await get(session, f"{prom}/-/ready")
    return status == 200


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Observed:
    require_binary("prometheus", "prometheus")
    return asyncio.run(scenario(tmp_path_factory.mktemp("observed")))


# --- metrics -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_promtool_check_metrics_is_clean(observed: Observed) -> None:
    promtool = require_binary("promtool", "prometheus")
    assert "image_watcher_registry_requests_total" in observed.scrape
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=observed.scrape,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )


@pytest.mark.integration
def test_no_credential_in_the_scrape(observed: Observed) -> None:
    assert len(observed.secrets) >= 3  # the access token, its Basic form, bearer token(s)
    for secret in observed.secrets:
        assert secret not in observed.scrape


# --- the dashboard, against Prometheus scraping the daemon ------------------------------------

# Panels that must show data after a short run (write-back and watch-set panels
# have data too, but a short run is not what they are about).
MUST_HAVE_DATA = (
    "Budget use against cap",
    "Budget used (share of cap)",
    "Budget wait (p50, p95)",
    "Grants and pauses",
    "Requests by registry and code",
    "Throttling (429) by registry",
    "Shard ownership",
    "Shards owned per replica",
    "Cycle time (p95) by shard",
    "Time since last cycle",
)


@pytest.mark.integration
def test_prometheus_scraped_the_daemon(observed: Observed) -> None:
    assert observed.scrapes >= MIN_SCRAPES


@pytest.mark.integration
def test_every_panel_query_succeeds(observed: Observed) -> None:
    titles = {title for title, _ in load_generator().panel_queries()}
    assert set(MUST_HAVE_DATA) <= titles
    assert len(observed.results) == len(load_generator().panel_queries())
    for title, expr, answer in observed.results:
        assert answer.get("status") == "success", (title, expr, answer)
        assert "warnings" not in answer, (title, expr, answer)


@pytest.mark.integration
def test_budget_request_and_shard_panels_return_data(observed: Observed) -> None:
    empty = [
        (title, expr)
        for title, expr, answer in observed.results
        if title in MUST_HAVE_DATA and not answer["data"]["result"]
    ]
    assert not empty, empty
    by_query = {expr: answer["data"]["result"] for _, expr, answer in observed.results}
    # Every configured shard reported as owned by the one replica.
    owned = next(r for t, e, r in _results(observed) if t == "Shard ownership")
    assert {s["metric"]["shard"]: s["value"][1] for s in owned} == {str(n): "1" for n in range(4)}
    # The budget is reported against its cap: 1000 x (1 - 5%).
    caps = next(
        r for e, r in by_query.items() if e.startswith("max by (budget) (image_watcher_budget_cap")
    )
    assert {c["metric"]["budget"]: c["value"][1] for c in caps}["gcr"] == "950"


def _results(observed: Observed) -> list[tuple[str, str, list[dict[str, Any]]]]:
    return [(t, e, a["data"]["result"]) for t, e, a in observed.results]


# --- logs ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_every_log_line_is_json_with_severity_and_event(observed: Observed) -> None:
    assert observed.exit_code == 0, observed.stderr
    assert len(observed.log_lines) > 10
    for line in observed.log_lines:
        event = json.loads(line)
        assert isinstance(event, dict), line
        assert event["severity"] in SEVERITIES, line
        assert isinstance(event["event"], str) and event["event"], line
        assert "time" in event, line


@pytest.mark.integration
def test_log_lines_carry_their_context(observed: Observed) -> None:
    events = [json.loads(line) for line in observed.log_lines]
    updated = [e for e in events if e["event"] == "updated"]
    assert observed.landed, "the new builds did not land within the run"
    # Both branches, both rounds: the second round has an old value to show.
    assert {e["branch"] for e in updated} == {"environment/b2c1", "environment/b2b1"}
    for e in updated:
        assert {"image", "branch", "file", "field", "old", "new"} <= set(e), e
        assert e["severity"] == "INFO" and e["new"] and e["new"] != e["old"]
    assert any(e["old"] for e in updated), updated
    assert {e["field"] for e in updated} == {"shasum", "overrideTag"}
    sweeps = [e for e in events if e["event"] == "sweep done"]
    assert sweeps and all(isinstance(e["shard"], int) for e in sweeps)
    throttled = [e for e in events if e["event"] == "registry throttled"]
    assert throttled and all(e["budget"] == "gcr" and e["severity"] == "WARNING" for e in throttled)
    skipped = [e for e in events if e["event"] == "image skipped"]
    assert skipped and all("image" in e and "shard" in e for e in skipped)


@pytest.mark.integration
def test_no_credential_in_any_log_line(observed: Observed) -> None:
    everything = "".join(observed.log_lines) + observed.stderr
    for secret in observed.secrets:
        assert secret not in everything
    assert not logs._AUTH_VALUES.search(everything)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure("debug", stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


@pytest.mark.unit
def test_redaction_of_keys_headers_and_urls(captured: io.StringIO) -> None:
    log = structlog.get_logger().bind(image="eu.gcr.io/acme/api", shard=3)
    log.info("pushing", url="https://deploy:hunter2@github.com/acme/gitops.git", branch="env/a")
    log.warning("redis down", redis_url="redis://:hunter2@redis:6379/0", budget="gcr")
    log.error(
        "registry refused",
        password="hunter2",
        token="tok-hunter2",
        Authorization="Bearer tok-hunter2",
        credentials={"user": "x", "secret": "hunter2"},
        headers={"Authorization": "Basic aHVudGVyMg==", "Accept": "application/json"},
        reason="sent Authorization: Bearer tok-hunter2 to https://u:hunter2@h/v2/",
        attempts=[{"url": "https://u:hunter2@h/v2/"}],
    )
    try:
        raise RuntimeError("clone of https://deploy:hunter2@github.com/acme/gitops.git failed")
    except RuntimeError:
        log.exception("git failed")
    lines = captured.getvalue().splitlines()
    assert len(lines) == 4
    events = [json.loads(line) for line in lines]
    for event in events:
        assert event["image"] == "eu.gcr.io/acme/api" and event["shard"] == 3
    for needle in ("hunter2", "aHVudGVyMg==", "tok-"):
        assert needle not in captured.getvalue(), captured.getvalue()
    assert events[0]["url"] == "https://***@github.com/acme/gitops.git"
    assert events[0]["branch"] == "env/a"
    assert events[1]["budget"] == "gcr" and events[1]["severity"] == "WARNING"
    assert events[2]["password"] == "***" and events[2]["severity"] == "ERROR"
    assert events[2]["headers"]["Accept"] == "application/json"
    assert events[3]["severity"] == "ERROR" and "RuntimeError" in events[3]["exception"]
    # Prose about auth is left alone; only credential-looking values go.
    assert logs.redact("auth basic needs username_env") == "auth basic needs username_env"
    assert logs.redact("Authorization: Bearer eyJhbGciOi.J9") == "Authorization: Bearer ***"
    assert logs.redact("ssh://ghp_abc123@github.com/x") == "ssh://***@github.com/x"


# --- readiness -------------------------------------------------------------------------------


@pytest.mark.integration
def test_ready_only_after_the_first_discovery(observed: Observed) -> None:
    statuses = [status for status, _ in observed.readyz]
    assert statuses[-1] == 200
    # Never ready, then unready again: 503s (each with its reason) come first.
    first_ok = statuses.index(200)
    assert all(s == 503 for s in statuses[:first_ok])
    for _, text in observed.readyz[:first_ok]:
        assert text.startswith("not ready: ") and len(text) > len("not ready: \n")


@pytest.mark.integration
async def test_unreachable_git_stays_up_and_unready(tmp_path: Path) -> None:
    settings = EmulatorSettings(mode="gcr", access_tokens={ACCESS_TOKEN})
    async with GoogleRegistryEmulator(settings) as emu:
        emu.push("team/api", "master")
        remote = make_remote(tmp_path, {})
        port = free_port()
        missing = tmp_path / "missing.git"
        config = daemon_config(tmp_path / "shards.yaml", emu.host, remote, str(missing), port)
        daemon = await start_daemon(config)
        out: list[str] = []
        err: list[str] = []
        readers = [
            asyncio.create_task(read_lines(daemon.stdout, out)),
            asyncio.create_task(read_lines(daemon.stderr, err)),
        ]
        try:
            async with aiohttp.ClientSession() as session:
                base = f"http://127.0.0.1:{port}"

                async def answers() -> bool:
                    assert daemon.returncode is None, "".join(err)
                    return (await get(session, f"{base}/healthz"))[0] == 200

                await wait_until_async(answers, STARTED_WITHIN, what="the server to answer")
                # A few discovery attempts (interval 1 s) later: still up, still unready.
                await wait_until_async(
                    lambda: sum('"discovery failed"' in line for line in out) >= 2,
                    STARTED_WITHIN,
                    interval=0.1,
                    what=lambda: f"two failed discoveries: {out[-8:]}",
                )
                assert daemon.returncode is None
                assert (await get(session, f"{base}/healthz"))[0] == 200
                status, text = await get(session, f"{base}/readyz")
                assert status == 503
                assert "git" in text and "unreachable" in text, text
                # Once the remote exists, the daemon becomes ready without a restart.
                shutil.copytree(remote.path, missing)

                async def ready() -> bool:
                    return (await get(session, f"{base}/readyz"))[0] == 200

                await wait_until_async(
                    ready, STARTED_WITHIN, interval=0.1, what="ready after git came back"
                )
        finally:
            code = await stop(daemon)
            await asyncio.gather(*readers)
    assert code == 0, "".join(err)
    failed = [json.loads(line) for line in out if '"discovery failed"' in line]
    assert all(e["severity"] == "ERROR" and "reason" in e for e in failed)


@pytest.mark.integration
async def test_ready_needs_git_read_and_the_first_lease_tick(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Readiness in-process, with a real Redis holding the shard leases."""
    values = "image:\n  repository: registry.example/team/api\n  tag: master\n"
    remote = make_remote(tmp_path, {"environment/a": {"apps/api/values.yaml": values}})
    config = load_text(
        f"""
shards: 4
interval: 2s
git: {{url: "{remote.url}", files: ["apps/*/values.yaml"], workdir: "{tmp_path / "clone"}"}}
""",
        "test.yaml",
        {},
    )
    async with Engine(config) as watcher:
        client = connect(redis_server.url, config.interval)
        membership = Membership(client, config.shards, config.interval)
        watcher.membership = membership
        try:
            assert watcher.readiness() == [
                "the git remote has not been read yet",
                "shard leases not taken yet (the first membership tick is pending)",
            ]
            await watcher.discover()
            assert watcher.readiness() == [
                "shard leases not taken yet (the first membership tick is pending)"
            ]
            stop = asyncio.Event()
            ticking = asyncio.create_task(membership.run(stop))
            await asyncio.wait_for(membership.ready.wait(), 5)
            assert watcher.readiness() == []
            # Redis going away later does not make the replica unready: it keeps
            # working on a local share (docs/architecture.md, "budget/: the request budget").
            redis_server.stop()
            await wait_until_async(
                lambda: not membership.connected, 30, what="the membership to notice"
            )
            assert watcher.readiness() == []
            redis_server.start()
            stop.set()
            await asyncio.wait_for(ticking, 10)
        finally:
            await client.aclose()
