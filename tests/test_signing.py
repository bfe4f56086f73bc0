"""Signed commits (``git.signing``) with real signatures: a throwaway ed25519 key made by
``ssh-keygen`` and a throwaway GnuPG home, commits made by ``watcher once`` and
``watcher run`` (a real docker-registry, a real remote) and by the people's commands,
each checked with ``git verify-commit``; the keys that cannot sign, refused at start
with exit 2; a key lost after the start, which fails the batch and pushes nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.cli_support import UNPRIVILEGED, assert_clean, open_world, watcher
from tests.conftest import DockerRegistry, GitRemote, git, make_remote
from watcher.config import load_text
from watcher.engine import Engine
from watcher_testing.images import push_image
from watcher_testing.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.integration

BRANCH = "environment/b2c1"
API = "apps/api/values.yaml"
WATCHER = "image-watcher <watcher@example.com>"
ADA = "Ada Lovelace <ada@example.com>"


@dataclass
class SshKey:
    key: Path
    allowed: Path
    """An allowed-signers file naming the key's public half."""

    def secret_body(self) -> str:
        """A line of the private key's base64 body: it must never be printed."""
        return self.key.read_text().splitlines()[1]


def ssh_key(dir: Path, name: str = "signing", passphrase: str = "") -> SshKey:
    dir.mkdir(parents=True, exist_ok=True)
    key = dir / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f", str(key)],
        check=True,
    )
    allowed = dir / f"{name}.allowed"
    allowed.write_text(f"watcher@example.com {(dir / f'{name}.pub').read_text()}")
    return SshKey(key, allowed)


@dataclass
class GnuPG:
    home: Path
    fingerprint: str

    @property
    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)}


def _agents(home: Path) -> list[int]:
    """Live gpg-agent processes serving ``home`` (zombies waiting to be reaped are gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and argv and argv[0].endswith(b"gpg-agent") and str(home).encode() in argv:
            found.append(int(entry.name))
    return found


@pytest.fixture
def gnupg() -> Iterator[GnuPG]:
    """A GnuPG home of its own with one ed25519 signing key without a passphrase; its
    agent (started by the first signature) is ended with it, and only that agent.

    Under /tmp, not pytest's tmp_path: the agent's socket lives in the home, and a unix
    socket's path must stay within 107 bytes.
    """
    home = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        subprocess.run(
            ["gpg", "--batch", "--passphrase", "", "--quick-generate-key",
             WATCHER, "ed25519", "sign", "never"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        listing = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--list-secret-keys"],
            check=True, capture_output=True, text=True, env=env,
        ).stdout  # fmt: skip
        fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        yield GnuPG(home, fingerprint)
    finally:
        try:
            # --kill asks the agent to stop and returns; it ends a moment later.
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
            wait_until(lambda: not _agents(home), 10, what="the throwaway home's gpg-agent to end")
        finally:
            shutil.rmtree(home, ignore_errors=True)


def verify(
    remote: GitRemote, rev: str, allowed: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``git verify-commit REV`` on the remote, against ``allowed`` (ssh) or ``env``'s home."""
    options = ["-c", f"gpg.ssh.allowedSignersFile={allowed}"] if allowed else []
    return subprocess.run(
        ["git", *options, "verify-commit", "-v", rev],
        cwd=remote.path, capture_output=True, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip


def config_text(registry: DockerRegistry, remote: GitRemote, dir: Path, signing: str) -> str:
    return f"""
interval: 1s
registries:
  - {{host: "{registry.host}", api: v2, auth: anonymous, insecure: true}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
  author: {{name: image-watcher, email: watcher@example.com}}
  workdir: {dir / "clone"}
  signing: {signing}
server: {{port: 0}}
"""


@dataclass
class Setup:
    registry: DockerRegistry
    remote: GitRemote
    dir: Path
    seeded: str
    """The branch's head before the watcher: everything after it is the watcher's."""

    def write(self, signing: str) -> Path:
        path = self.dir / "shards.yaml"
        path.write_text(config_text(self.registry, self.remote, self.dir, signing))
        return path

    def since_seed(self) -> list[str]:
        return git(self.remote.path, "rev-list", f"{self.seeded}..{BRANCH}").split()

    async def run(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "watcher", *args],
            capture_output=True, text=True, timeout=90, env={**os.environ, **(env or {})},
        )  # fmt: skip
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        return done


@pytest.fixture
async def setup(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, tmp_path: Path
) -> AsyncIterator[Setup]:
    await push_image(session, docker_registry.url, "team/api", "master", kind="oci", seed="api-1")
    values = f"image:\n  repository: {docker_registry.host}/team/api\n  tag: master\n"
    remote = make_remote(tmp_path, {BRANCH: {API: values}})
    yield Setup(docker_registry, remote, tmp_path, remote.head(BRANCH))


async def test_once_and_the_peoples_commands_sign_with_ssh(
    setup: Setup, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key = ssh_key(tmp_path / "keys")
    stranger = ssh_key(tmp_path / "keys", "stranger")
    config = setup.write(f"{{format: ssh, key: {key.key}}}")
    said = []

    once = await setup.run("once", "--config", str(config))
    said.append(once.stdout + once.stderr)
    assert once.returncode == 0, once.stderr
    assert "committed" in once.stdout, once.stdout
    assert "shasum: sha256:" in setup.remote.read(BRANCH, API)
    pin = await setup.run("pin", "--config", str(config), "--author", ADA, BRANCH, API, "v1")
    said.append(pin.stdout + pin.stderr)
    assert pin.returncode == 0, pin.stderr
    # A new build, the pin released: `once` writes it on top of the person's commits.
    await push_image(session, setup.registry.url, "team/api", "master", kind="oci", seed="api-2")
    release = await setup.run("release", "--config", str(config), "--author", ADA, BRANCH, API)
    said.append(release.stdout + release.stderr)
    assert release.returncode == 0, release.stderr
    again = await setup.run("once", "--config", str(config))
    said.append(again.stdout + again.stderr)
    assert "committed" in again.stdout, again.stdout

    commits = setup.since_seed()
    assert len(commits) == 4, commits  # once, pin, release, once
    for commit in commits:
        good = verify(setup.remote, commit, key.allowed)
        assert good.returncode == 0, good.stderr
        assert 'Good "git" signature for watcher@example.com with ED25519 key' in good.stderr
        # Verified by this key alone: against another key's allowed signers, it fails.
        assert verify(setup.remote, commit, stranger.allowed).returncode != 0
    # The seed, a person's unsigned commit, does not verify: the check can fail.
    assert verify(setup.remote, setup.seeded, key.allowed).returncode != 0
    # A person's command stays the person's; the watcher, whose key signs, commits it.
    who = git(setup.remote.path, "log", "--format=%an <%ae>|%cn <%ce>", f"{setup.seeded}..{BRANCH}")
    assert who.splitlines() == [
        f"{WATCHER}|{WATCHER}",
        f"{ADA}|{WATCHER}",
        f"{ADA}|{WATCHER}",
        f"{WATCHER}|{WATCHER}",
    ]
    assert all(key.secret_body() not in text for text in said)


async def test_the_daemon_signs_its_batches(setup: Setup, tmp_path: Path) -> None:
    key = ssh_key(tmp_path / "keys")
    config = setup.write(f"{{format: ssh, key: {key.key}}}")
    log = tmp_path / "daemon.log"
    with log.open("wb") as sink:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "watcher", "run", "--config", str(config),
            stdout=sink, stderr=sink,
        )  # fmt: skip
    try:

        def committed() -> bool:
            return setup.remote.head(BRANCH) != setup.seeded

        await wait_until_async(committed, 60, interval=0.2, what=lambda: log.read_text()[-3000:])
    finally:
        daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), 60)
    assert daemon.returncode == 0, log.read_text()[-3000:]
    commits = setup.since_seed()
    assert len(commits) == 1, commits
    good = verify(setup.remote, commits[0], key.allowed)
    assert good.returncode == 0, good.stderr
    assert 'Good "git" signature for watcher@example.com' in good.stderr


async def test_once_and_pin_sign_with_openpgp(setup: Setup, gnupg: GnuPG) -> None:
    config = setup.write(f"{{format: openpgp, key: {gnupg.fingerprint}}}")
    once = await setup.run("once", "--config", str(config), env=gnupg.env)
    assert once.returncode == 0, once.stderr
    assert "committed" in once.stdout, once.stdout
    pin = await setup.run(
        "pin", "--config", str(config), "--author", ADA, BRANCH, API, "v1", env=gnupg.env
    )
    assert pin.returncode == 0, pin.stderr

    commits = setup.since_seed()
    assert len(commits) == 2, commits
    for commit in commits:
        good = verify(setup.remote, commit, env=gnupg.env)
        assert good.returncode == 0, good.stderr
        assert f"using EDDSA key {gnupg.fingerprint}" in good.stderr
        assert f'Good signature from "{WATCHER}"' in good.stderr
    assert verify(setup.remote, setup.seeded, env=gnupg.env).returncode != 0


async def test_a_key_lost_after_start_fails_the_batch_never_pushes_unsigned(
    setup: Setup, tmp_path: Path
) -> None:
    key = ssh_key(tmp_path / "keys")
    text = config_text(setup.registry, setup.remote, tmp_path, f"{{format: ssh, key: {key.key}}}")
    cfg = load_text(text, "shards.yaml", {})
    key.key.unlink()
    async with Engine(cfg) as engine:
        report = await engine.cycle()
    outcome = report.outcomes[BRANCH]
    assert outcome.result == "error", outcome
    assert len(outcome.pending) == 1
    # git's own reason, naming the key by its path.
    assert (outcome.message or "").startswith("git commit-tree: "), outcome.message
    assert str(key.key) in (outcome.message or ""), outcome.message
    assert setup.remote.head(BRANCH) == setup.seeded


# --- keys that cannot sign: refused at start --------------------------------------------------


def signed(config: str, signing: str) -> str:
    """``config`` (the command-line world's) with ``git.signing: SIGNING``."""
    assert "  workdir:" in config
    return config.replace("  workdir:", f"  signing: {signing}\n  workdir:")


@pytest.mark.parametrize("command", ["check", "once", "run", "pin"])
async def test_keys_that_cannot_sign_are_config_errors(
    tmp_path: Path, command: str, gnupg: GnuPG
) -> None:
    args = {"pin": ["environment/a", "team/app", "v1", "--author", ADA]}.get(command, [])
    async with open_world(tmp_path) as world:
        key = await asyncio.to_thread(ssh_key, tmp_path / "keys")
        locked = (await asyncio.to_thread(ssh_key, tmp_path / "keys", "locked", "words")).key
        unreadable = tmp_path / "keys" / "unreadable"
        shutil.copy(key.key, unreadable)
        unreadable.chmod(0)
        missing = tmp_path / "keys" / "missing"
        problem = "git.signing: key"
        cases = {  # git.signing -> the problem reported at its line
            f"{{format: ssh, key: {missing}}}": f"{problem} {missing}: no such file",
            f"{{format: ssh, key: {unreadable}}}": (
                f"{problem} {unreadable}: cannot read it (Permission denied)"
            ),
            f"{{format: ssh, key: {locked}}}": f"{problem} {locked} cannot sign: Load key",
            f"{{format: x509, key: {key.key}}}": (
                "git.signing.format: must be one of ssh, openpgp, not 'x509'"
            ),
            "{format: openpgp, key: '0xDEADBEEFDEADBEEF'}": (
                f"{problem} 0xDEADBEEFDEADBEEF: gpg holds no secret key by that id"
            ),
        }
        head = world.remote.head("environment/a")
        for signing, why in cases.items():
            config = world.write(signed(world.config(), signing))
            line = config.read_text().splitlines().index(f"  signing: {signing}") + 1
            out = await watcher(
                [command, "--config", str(config), *args],
                gnupg.env,
                prefix=UNPRIVILEGED,
                daemon_seconds=10 if command == "run" else None,
            )
            assert_clean(out, 2)
            assert len(out.reasons) == 1, out.describe()
            assert out.reasons[0].startswith(f"{config}:{line}: {why}"), out.describe()
            assert key.secret_body() not in out.stdout + out.stderr
        # Nothing was committed, let alone pushed unsigned.
        assert world.remote.head("environment/a") == head
        # The same file with a key that signs is fine (the errors were the keys').
        config = world.write(signed(world.config(), f"{{format: ssh, key: {key.key}}}"))
        out = await watcher(["check", "--config", str(config)], gnupg.env)
        assert_clean(out, 0)
