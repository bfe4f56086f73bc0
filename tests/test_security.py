"""Security promises with real parts: secrets, injected tags, git host keys.

Covered elsewhere, not repeated: the Authorization header never follows a redirect to
another host, and plain http is refused unless ``insecure: true``
(tests/test_registry.py, at the client that every request goes through).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, git, make_remote
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator
from watcher_testing.waiting import wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cret-access-token-7f2d9a"
GIT_SECRET = "ghp_gitSecretToken12345"


def _once(
    config: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher", "once", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def once(
    config: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Off the event loop, which keeps serving the emulator meanwhile."""
    return await asyncio.to_thread(_once, config, *extra, env=env)


async def test_credentials_and_tokens_never_in_logs_errors_or_commits(tmp_path: Path) -> None:
    """Promise: no secret leaked — the registry password, the bearer tokens the registry
    issued and a token in the git URL appear in no log line, error, printed report or
    commit message."""
    settings = EmulatorSettings(access_tokens={SECRET})
    async with GoogleRegistryEmulator(settings) as emu:
        emu.push("proj/app", "master")
        files = {
            "apps/app/values.yaml": f"image:\n  repository: {emu.host}/proj/app\n  tag: master\n"
        }
        remote = make_remote(tmp_path, {"environment/a": files})
        config = tmp_path / "shards.yaml"
        config.write_text(
            f"""
registries:
  - {{host: "{emu.host}", api: v2, auth: basic, username_env: REG_USER,
      password_env: REG_PASS, insecure: true}}
git: {{url: "{remote.url}", files: ["apps/*/values.yaml"], workdir: "{tmp_path / "clone"}"}}
"""
        )
        env = {"REG_USER": "oauth2accesstoken", "REG_PASS": SECRET}
        ok = await once(config, env=env)
        # A wrong password: the error path must not echo it either.
        bad = await once(config, env={**env, "REG_PASS": SECRET + "-wrong"})
        # A git remote with a token in its URL that cannot be reached: errors name it redacted.
        git_env = {
            **env,
            "WATCHER_GIT_URL": f"https://x-token:{GIT_SECRET}@127.0.0.1:{free_port()}/r.git",
        }
        config2 = tmp_path / "shards2.yaml"
        config2.write_text(
            config.read_text().replace(str(tmp_path / "clone"), str(tmp_path / "c2"))
        )
        unreachable = await once(config2, env=git_env)
        tokens = list(emu._tokens)
    assert ok.returncode == 0, ok.stderr
    assert "updated" in ok.stdout
    assert unreachable.returncode == 1 and "127.0.0.1" in unreachable.stderr
    assert tokens, "the registry issued no bearer token"
    message = git(remote.path, "log", "--format=%B", "environment/a")
    for output in (
        ok.stdout,
        ok.stderr,
        bad.stdout,
        bad.stderr,
        unreachable.stdout,
        unreachable.stderr,
        message,
    ):
        for secret in (SECRET, GIT_SECRET, *tokens):
            assert secret not in output


async def test_a_registry_cannot_inject_yaml_or_a_newline_through_a_tag(tmp_path: Path) -> None:
    """Promise: no crash on bad input / no injection — tags from the registry that break
    the OCI grammar (a newline and a YAML key, a quote, a space) are never written."""
    async with GoogleRegistryEmulator(EmulatorSettings(auth_required=False)) as emu:
        good = emu.push("proj/app", "build-1")
        evil = emu.push("proj/app", "build-2")
        repo = emu._repos["proj/app"]
        del repo.tags["build-2"]
        # Newest uploads, each named to escape the scalar if it were spliced in as is.
        for name in ("x\nrepository: evil.io/x", "x' # ", 'x"\n- a', "a b", "x:\n  y"):
            repo.tags[name] = evil
        files = {
            "apps/app/values.yaml": (
                f"image:\n  repository: {emu.host}/proj/app\n  tag: master\n"
                "  watch: {strategy: newest, tags: '.*'}\n"
            )
        }
        remote = make_remote(tmp_path, {"environment/a": files})
        config = tmp_path / "shards.yaml"
        config.write_text(
            f"""
registries: [{{host: "{emu.host}", api: google, insecure: true}}]
git: {{url: "{remote.url}", files: ["apps/*/values.yaml"], workdir: "{tmp_path / "clone"}"}}
"""
        )
        result = await once(config)
    assert result.returncode == 0, result.stderr
    text = remote.read("environment/a", "apps/app/values.yaml")
    assert "evil" not in text and text.count("\n") == 5, text
    assert "overrideTag: build-1" in text
    assert good


@pytest.mark.skipif(
    shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists(),
    reason="no sshd (apt-get install openssh-server)",
)
def test_git_over_ssh_refuses_an_unknown_host_key(tmp_path: Path) -> None:
    """Promise: git host keys are checked — with the chart's ssh options
    (StrictHostKeyChecking=yes, the Secret's known_hosts), a remote whose key is not in
    known_hosts is refused; with the key listed, the same remote works."""
    remote = make_remote(
        tmp_path,
        {"environment/a": {"apps/app/values.yaml": "image: {repository: a.io/x, tag: t}\n"}},
    )
    for key in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / key)], check=True
        )
    auth = tmp_path / "authorized_keys"
    auth.write_text((tmp_path / "client.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)
    port = free_port()
    sshd = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-p", str(port), "-h", str(tmp_path / "host"),
         "-o", "ListenAddress=127.0.0.1", "-o", f"AuthorizedKeysFile={auth}",
         "-o", "StrictModes=no", "-o", "PermitRootLogin=prohibit-password",
         "-o", "PasswordAuthentication=no", "-o", f"PidFile={tmp_path / 'sshd.pid'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    def answers() -> bool:
        scan = subprocess.run(["ssh-keyscan", "-p", str(port), "127.0.0.1"], capture_output=True)
        return scan.returncode == 0 and bool(scan.stdout)

    try:
        wait_until(answers, 30, interval=0.1, what="sshd to start")
        known = tmp_path / "known_hosts"
        known.write_text("")
        config = tmp_path / "shards.yaml"
        user = os.environ.get("USER") or "root"
        config.write_text(
            f'git: {{url: "ssh://{user}@127.0.0.1:{port}{remote.path}",'
            f' files: ["apps/*/values.yaml"], workdir: "{tmp_path / "clone"}"}}\n'
        )
        ssh = (
            f"ssh -i {tmp_path / 'client'} -o UserKnownHostsFile={known} "
            "-o StrictHostKeyChecking=yes -o BatchMode=yes"
        )
        env = {**os.environ, "GIT_SSH_COMMAND": ssh}
        run = [sys.executable, "-m", "watcher", "check", "--config", str(config)]
        refused = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
        assert refused.returncode == 1, refused.stderr
        assert "Host key verification failed" in refused.stderr
        # The same remote, its key now known: accepted.
        host_key = (tmp_path / "host.pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        (tmp_path / "clone").exists() and shutil.rmtree(tmp_path / "clone")
        accepted = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
        assert accepted.returncode == 0, accepted.stderr
    finally:
        sshd.terminate()
        sshd.wait(5)
