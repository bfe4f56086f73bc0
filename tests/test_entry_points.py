"""Every command, fed the bad configurations and environments people really meet, ends
in one of three ways: exit 0; exit 1 with one line saying why; exit 2 with ``file:line``
messages. Never a traceback, on either stream, and never a password.

Real processes (``python -m watcher``), a real git remote, real redis-servers (one
with a password, one serving TLS), the Google-registry emulator.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from tests.cli_support import (
    COMMANDS,
    ONE_SHOT,
    PEOPLE,
    SCHEME_HINT,
    SECRET,
    UNPRIVILEGED,
    Outcome,
    World,
    assert_clean,
    open_world,
    watcher,
)
from tests.conftest import RedisServer, free_port
from watcher.cli import main
from watcher_testing.services import make_tls

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with open_world(tmp_path) as opened:
        yield opened


# --- configurations that cannot be used: exit 2, file:line ---------------------------------


def _bad_configs(world: World) -> Iterator[tuple[str, Path, dict[str, str], tuple[str, ...]]]:
    """(name, config path, environment, what stderr must name) for each broken setting."""
    yield (
        "redis url without a scheme",
        world.write(world.config('redis: {url: "localhost:6379"}')),
        {},
        ("redis.url", "has no scheme"),
    )
    yield (
        "redis url with a password and a wrong scheme",
        world.write(world.config(f'redis: {{url: "http://:{SECRET}@redis:6379/0"}}')),
        {},
        ("redis.url", "scheme must be"),
    )
    yield (
        "WATCHER_REDIS_URL without a scheme",
        world.write(world.config()),
        {"WATCHER_REDIS_URL": f"watcher:{SECRET}@localhost:6379"},
        ("WATCHER_REDIS_URL", "has no scheme"),
    )
    yield (
        "redis cluster over a unix socket",
        world.write(world.config('redis: {url: "unix:///run/redis.sock", cluster: true}')),
        {},
        ("redis.url", "Redis Cluster"),
    )
    yield (
        "a CA file that does not exist",
        world.write(world.config('redis: {url: "rediss://r:6380/0", ca_file: /nonexistent.pem}')),
        {},
        ("redis.ca_file", "no such file"),
    )
    yield (
        "a basic-auth variable that is not set",
        world.write(
            world.config(
                registry="{host: r.example, auth: basic, username_env: NO_USER, password_env: NO_P}"
            )
        ),
        {},
        ("registries[1].auth", "NO_USER (username_env) is not set"),
    )
    yield (
        "a docker config.json that does not exist",
        world.write(
            world.config(
                registry="{host: q.example, auth: dockerconfig, config: /nonexistent.json}"
            )
        ),
        {},
        ("registries[1].auth", "/nonexistent.json: cannot read"),
    )
    directory = world.dir / "config-dir.yaml"
    directory.mkdir()
    yield ("the config is a directory", directory, {}, ("Is a directory",))
    yield ("the config does not exist", world.dir / "missing.yaml", {}, ("cannot read",))
    binary = world.dir / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00shards: 4\n")
    yield ("the config is not UTF-8", binary, {}, ("not UTF-8",))
    nul = world.write('git: {url: "\x00"}\n', "nul.yaml")
    yield ("the config holds a NUL character", nul, {}, ("(yaml)",))
    yield (
        "the git url is missing",
        world.write("shards: 4\n"),
        {},
        ("git.url", "required"),
    )


def test_every_command_refuses_bad_configs_with_file_line_messages(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command, each broken setting, through ``main`` as ``python -m watcher`` calls it.

    In this process: a traceback would be an exception out of ``main``. The real
    processes (exit status, both streams) are below, for a few of these.
    """
    failures = []
    for name, path, env, words in _bad_configs(world):
        for command in (*COMMANDS, *PEOPLE):
            for key in ("WATCHER_REDIS_URL", "WATCHER_GIT_URL"):
                monkeypatch.delenv(key, raising=False)
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            try:
                code = main([command, "--config", str(path), *PEOPLE.get(command, ())])
            except BaseException as exc:  # what would have been a traceback
                captured = capsys.readouterr()
                failures.append(f"{command} / {name}: raised {exc!r}\n{captured.err}")
                continue
            finally:
                structlog.reset_defaults()
            captured = capsys.readouterr()
            out = Outcome(code, captured.out, captured.err)
            try:
                assert_clean(out, 2)
                for word in words:
                    assert word in out.stderr, out.describe()
            except AssertionError as exc:
                failures.append(f"{command} / {name}: {exc}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("command", [*COMMANDS, "pin", "status"])
async def test_bad_configs_in_real_processes(world: World, command: str) -> None:
    args = PEOPLE.get(command, ())
    config = world.write(world.config('redis: {url: "localhost:6379"}'))
    line = config.read_text().splitlines().index('redis: {url: "localhost:6379"}') + 1
    out = await watcher([command, "--config", str(config), *args])
    assert_clean(out, 2)
    assert out.reasons == [f"{config}:{line}: redis.url: has no scheme: {SCHEME_HINT}"]
    out = await watcher(
        [command, "--config", str(world.write(world.config())), *args],
        {"WATCHER_REDIS_URL": f"watcher:{SECRET}@localhost:6379"},
    )
    assert_clean(out, 2)
    assert "redis.url (from WATCHER_REDIS_URL): has no scheme" in out.reasons[0]
    unreadable = world.write(world.config(), "unreadable.yaml")
    unreadable.chmod(0)
    out = await watcher([command, "--config", str(unreadable), *args], prefix=UNPRIVILEGED)
    assert_clean(out, 2)
    assert out.reasons == [f"{unreadable}:0: (file): cannot read: Permission denied"]


# --- environments that fail at run time: exit 1 with one line, or carry on ---------------------


async def test_unreachable_remote(world: World) -> None:
    url = f"https://bot:{SECRET}@127.0.0.1:{free_port()}/gitops.git"
    config = world.write(world.config(url=url))
    for command in ONE_SHOT:
        out = await watcher([command, "--config", str(config)])
        assert_clean(out, 1)
        assert out.reasons[0].startswith("git: "), out.describe()
    # The people's commands side by side (each its own process): the same contract.
    outs = await asyncio.gather(
        *(watcher([command, "--config", str(config), *args]) for command, args in PEOPLE.items())
    )
    for out in outs:
        assert_clean(out, 1)
        assert out.reasons[0].startswith("git: "), out.describe()
    # The daemon keeps trying (readiness says why) and stops cleanly.
    out = await watcher(["run", "--config", str(config)], daemon_seconds=4)
    assert_clean(out, 0)
    assert '"discovery failed"' in out.stdout, out.describe()


@pytest.mark.parametrize("how", ["unreadable", "a file"])
async def test_unusable_workdir(world: World, how: str) -> None:
    config = world.write(world.config())
    clone = world.dir / "clone"
    if how == "unreadable":
        assert_clean(await watcher(["check", "--config", str(config)]), 0)  # makes the clone
        clone.chmod(0)
    else:
        clone.write_text("not a directory\n")
    try:
        for command in ONE_SHOT:
            out = await watcher([command, "--config", str(config)], prefix=UNPRIVILEGED)
            assert_clean(out, 1)
            assert "cannot open" in out.reasons[0], out.describe()
        out = await watcher(["run", "--config", str(config)], prefix=UNPRIVILEGED, daemon_seconds=4)
        assert_clean(out, 0)
        assert '"discovery failed"' in out.stdout, out.describe()
    finally:
        if clone.is_dir():
            clone.chmod(0o755)


async def test_git_not_installed(world: World, tmp_path: Path) -> None:
    """A host without git (a slim image built wrong): one reason, not a traceback."""
    config = world.write(world.config())
    bare = tmp_path / "no-git-bin"  # the watcher runs as sys.executable, by its path
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    for command in ONE_SHOT:
        out = await watcher([command, "--config", str(config)], env)
        assert_clean(out, 1)
        assert "git is not installed" in out.reasons[0], out.describe()


@pytest.mark.parametrize("cluster", [False, True])
async def test_redis_down_at_start(world: World, cluster: bool) -> None:
    """Down is not misconfigured: the commands work on the fallbacks and say so."""
    url = f"redis://watcher:{SECRET}@127.0.0.1:{free_port()}/0"
    config = world.write(world.config(f'redis: {{url: "{url}", cluster: {str(cluster).lower()}}}'))
    # check, shards and budget never talk to Redis: once with a single Redis is enough.
    for command in ONE_SHOT if not cluster else ("once",):
        out = await watcher([command, "--config", str(config)])
        assert_clean(out, 0)
        if command == "once":
            assert "redis unreachable at start" in out.stderr, out.describe()
            assert "committed" in out.stdout, out.describe()  # on the local budget
    out = await watcher(["run", "--config", str(config)], daemon_seconds=4)
    assert_clean(out, 0)
    assert "redis unreachable" in out.stdout, out.describe()


async def test_redis_refusing_the_password(world: World) -> None:
    server = RedisServer(world.dir / "redis", password="the-right-one")
    server.start()
    try:
        url = f"redis://:{SECRET}@127.0.0.1:{server.port}/0"
        config = world.write(world.config(f'redis: {{url: "{url}"}}'))
        for command in ("once", "run"):
            out = await watcher([command, "--config", str(config)], daemon_seconds=20)
            assert_clean(out, 1)
            assert "authentication failed" in out.reasons[0], out.describe()
        # No password at all: the same, in the server's words.
        no_password = world.write(
            world.config(f'redis: {{url: "redis://127.0.0.1:{server.port}"}}')
        )
        out = await watcher(["once", "--config", str(no_password)])
        assert_clean(out, 1)
        assert "authentication failed (" in out.reasons[0], out.describe()
        # The commands that never talk to Redis are not held up by it.
        for command in ("check", "shards", "budget"):
            assert_clean(await watcher([command, "--config", str(config)]), 0)
    finally:
        server.stop()


async def test_redis_tls_certificate_from_another_ca(world: World) -> None:
    server = RedisServer(world.dir / "redis", tls=make_tls(world.dir / "tls"))
    server.start()
    try:
        other = make_tls(world.dir / "other-ca")
        url = f"rediss://:{SECRET}@127.0.0.1:{server.port}/0"
        extra = f'redis: {{url: "{url}", ca_file: "{other.ca}"}}'
        config = world.write(world.config(extra))
        for command in ("once", "run"):
            out = await watcher([command, "--config", str(config)], daemon_seconds=20)
            assert_clean(out, 1)
            assert "certificate is not trusted" in out.reasons[0], out.describe()
            assert "redis.ca_file" in out.reasons[0], out.describe()
    finally:
        server.stop()


async def test_tls_url_for_a_plain_redis(world: World, redis_server: RedisServer) -> None:
    """A plain Redis reads the TLS hello as the start of a command and waits: to the
    client that is a timeout, as on a dead network, so the commands carry on (and say
    it may be TLS)."""
    url = f"rediss://:{SECRET}@127.0.0.1:{redis_server.port}/0"
    config = world.write(world.config(f'redis: {{url: "{url}"}}'))
    out = await watcher(["once", "--config", str(config)])
    assert_clean(out, 0)
    assert "it does not serve TLS" in out.stderr, out.describe()


async def test_registry_refusing_tls(world: World) -> None:
    """An http-only registry configured without ``insecure``: the image is skipped, said so."""
    config = world.write(world.config(insecure=False))
    out = await watcher(["once", "--config", str(config)])
    assert_clean(out, 0)
    assert "skipped image" in out.stdout, out.describe()
    out = await watcher(["run", "--config", str(config)], daemon_seconds=5)
    assert_clean(out, 0)
    assert '"image skipped"' in out.stdout, out.describe()


async def test_server_port_taken(world: World) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = world.write(world.config(port=port))
        out = await watcher(["run", "--config", str(config)], daemon_seconds=20)
    assert_clean(out, 1)
    assert f"cannot listen on 0.0.0.0:{port}" in out.reasons[0], out.describe()


async def test_output_closed_early(world: World) -> None:
    config = world.write(world.config())
    for command in ("shards", "budget"):
        out = await watcher([command, "--config", str(config)], close_stdout=True)
        assert_clean(out, 1)
        assert "output was closed" in out.reasons[0], out.describe()


async def test_demo_that_cannot_start(world: World) -> None:
    """The demo narrates on stdout; a failure ends it with one line on stderr."""
    blocked = world.dir / "a-file"
    blocked.write_text("")
    out = await watcher(["demo", "--workdir", str(blocked / "demo")])
    assert_clean(out, 1)
    assert out.reasons[0].startswith("demo failed"), out.describe()
    # No docker-registry on the PATH (git still there: the watcher needs it to start).
    path = world.dir / "bin"
    path.mkdir()
    (path / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    out = await watcher(["demo", "--workdir", str(world.dir / "demo")], {"PATH": str(path)})
    assert_clean(out, 1)
    assert "docker-registry is not installed" in out.reasons[0], out.describe()
