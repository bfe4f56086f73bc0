"""Running the ``watcher`` command as people do, and what its ending must look like.

Shared by the tests of the command line's failures (``test_entry_points``) and of
Redis deployments (``test_redis_deployments``): a git remote with one image
block, the Google-registry emulator serving that image, a config writer, a
runner for ``python -m watcher`` and the contract every ending must keep.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GitRemote, free_port, make_remote
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator

SECRET = "s3cr3t-Hunter2"
"""Put in every Redis and git URL that carries a password: it must never be printed."""
COMMANDS = ("run", "once", "check", "shards", "budget")
ONE_SHOT = ("once", "check", "shards", "budget")
# The people's commands, with the arguments each takes in the world below.
PEOPLE: dict[str, tuple[str, ...]] = {
    "pin": ("environment/a", "team/app", "v1", "--author", "A Person <a@example.com>"),
    "release": ("environment/a", "team/app", "--author", "A Person <a@example.com>"),
    "rollback": ("environment/a", "app", "--author", "A Person <a@example.com>"),
    "history": ("environment/a", "apps/app/values.yaml"),
    "status": ("--branch", "environment/*"),
}
# Root reads any file whatever its mode: drop the capabilities that allow it,
# so an unreadable file or clone is unreadable to the watcher too.
UNPRIVILEGED = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
)
SCHEME_HINT = "write redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or unix:///PATH"
PROBLEM = re.compile(r"^[^\s:][^:]*:\d+: \S")  # file:line: what


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str

    @property
    def reasons(self) -> list[str]:
        """stderr without the JSON log lines: what the command says to a person."""
        return [line for line in self.stderr.splitlines() if line and not line.startswith("{")]

    def describe(self) -> str:
        tail = f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"
        return f"exit {self.code}\n{tail}"


async def watcher(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    prefix: Sequence[str] = (),
    daemon_seconds: float | None = None,
    close_stdout: bool = False,
) -> Outcome:
    """``python -m watcher ARGS``; a daemon gets SIGTERM after ``daemon_seconds`` (if alive).

    ``close_stdout``: stdout is a pipe nobody reads, as after ``| head -0``.
    """
    stdout: int = asyncio.subprocess.PIPE
    if close_stdout:
        reader, stdout = os.pipe()
        os.close(reader)
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "watcher",
        *args,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    if close_stdout:
        os.close(stdout)
    if daemon_seconds is not None:
        try:
            await asyncio.wait_for(proc.wait(), daemon_seconds)
        except TimeoutError:
            proc.send_signal(signal.SIGTERM)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"watcher {' '.join(args)} did not end\n{err.decode()[-3000:]}")
    return Outcome(proc.returncode, (out or b"").decode(errors="replace"), err.decode())


@asynccontextmanager
async def daemon(config: Path, log: Path) -> AsyncIterator[Path]:
    """``watcher run --config CONFIG``, its output into ``log`` (yielded); SIGTERM at the
    end must exit 0."""
    proc = _spawn(config, log)
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = await asyncio.to_thread(proc.wait)
    assert code == 0, _tail(log)


async def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> list[int | None]:
    """SIGTERM to every daemon still running, then each given 10 s to exit (killed
    after that: None); their exit codes. Waits off the event loop, which keeps serving
    the emulators meanwhile."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for proc in running:
        try:
            codes.append(await asyncio.to_thread(proc.wait, 10))
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
            codes.append(None)
    return codes


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


def _spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def assert_clean(out: Outcome, code: int) -> None:
    """The contract: no traceback, no secret, the right code, and the right kind of message."""
    both = out.stdout + out.stderr
    assert "Traceback" not in both, out.describe()
    assert SECRET not in both, out.describe()
    assert out.code == code, out.describe()
    if code == 1:
        assert len(out.reasons) == 1, out.describe()
    if code == 2:
        assert out.reasons, out.describe()
        assert all(PROBLEM.match(line) for line in out.reasons), out.describe()


@dataclass
class World:
    dir: Path
    remote: GitRemote
    emulator: GoogleRegistryEmulator

    def config(
        self,
        extra: str = "",
        *,
        insecure: bool = True,
        url: str = "",
        port: int = 0,
        registry: str = "",
    ) -> str:
        """A config for this world; ``registry``: one more ``registries`` entry (flow style)."""
        return f"""
shards: 4
interval: 1s
registries:
  - host: "{self.emulator.host}"
    api: google
    auth: anonymous
    insecure: {str(insecure).lower()}
  {"- " + registry if registry else ""}
git:
  url: "{url or self.remote.url}"
  files: ["apps/*/values.yaml"]
  workdir: "{self.dir / "clone"}"
server: {{port: {port or free_port()}}}
{extra}
"""

    def write(self, text: str, name: str = "shards.yaml") -> Path:
        path = self.dir / f"{free_port()}-{name}"
        path.write_text(text)
        return path


@asynccontextmanager
async def open_world(tmp_path: Path) -> AsyncIterator[World]:
    """A remote whose ``environment/a`` has one block following ``team/app:master``."""
    async with GoogleRegistryEmulator(EmulatorSettings(auth_required=False)) as emu:
        emu.push("team/app", "master")
        values = f"image:\n  repository: {emu.host}/team/app\n  tag: master\n"
        remote = make_remote(tmp_path, {"environment/a": {"apps/app/values.yaml": values}})
        yield World(tmp_path, remote, emu)
