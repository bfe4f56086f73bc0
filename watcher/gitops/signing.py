"""Signed commits (``git.signing``): the options git signs with, and a check at start.

Blocking. The signature is made by git itself (``commit-tree -S``), with the
format and key given as ``-c`` options of that one command, so no git
configuration on the host (global, system or the clone's) is read for them or
changed. :func:`problem` signs a few bytes the way git will, with the same
program and key, so that a key that cannot sign (missing, unreadable, with a
passphrase, unknown to gpg) stops the watcher at start, never at its first
push; and since ``commit-tree -S`` fails rather than writing an unsigned
commit, a key that breaks later costs a failed batch (retried), never an
unsigned push. Nothing here reads or prints a key's content: messages name
its path or id.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from watcher.config import Signing
from watcher.tuning import SIGNING_CHECK_TIMEOUT

# The program git runs for each format when ``gpg.ssh.program`` / ``gpg.program``
# are not set; the check runs the same one.
_SSH_KEYGEN = "ssh-keygen"
_GPG = "gpg"
# git's SSH signature namespace: a signature made for another namespace does not verify.
_NAMESPACE = "git"
_PROBE = b"image-tag-watcher signing check\n"
_PROMPT = "Enter passphrase:"


def options(signing: Signing) -> tuple[str, ...]:
    """The ``git -c`` options that make ``commit-tree -S`` sign with ``signing``."""
    return ("-c", f"gpg.format={signing.format}", "-c", f"user.signingKey={signing.key}")


def problem(signing: Signing) -> str | None:
    """Why ``signing`` cannot sign a commit now, in one line; None when it can."""
    if signing.format == "ssh":
        return _ssh_problem(signing.key)
    return _openpgp_problem(signing.key)


def _ssh_problem(key: str) -> str | None:
    if not os.path.isfile(key):
        return f"key {key}: no such file"
    try:
        with open(key, "rb"):
            pass
    except OSError as exc:
        return f"key {key}: cannot read it ({exc.strerror or exc})"
    # As git does it: the data in a file, signed into FILE.sig; stdin is not for data,
    # since ssh-keygen reads a passphrase from it when there is no terminal.
    with tempfile.TemporaryDirectory(prefix="watcher-signing-") as scratch:
        data = Path(scratch) / "data"
        data.write_bytes(_PROBE)
        why = _run([_SSH_KEYGEN, "-Y", "sign", "-n", _NAMESPACE, "-f", key, str(data)])
    return f"key {key} cannot sign: {why}" if why else None


def _openpgp_problem(key: str) -> str | None:
    listed = _run([_GPG, "--batch", "--no-tty", "--list-secret-keys", "--", key])
    if listed is not None:
        return f"key {key}: gpg holds no secret key by that id ({listed})"
    # What git runs (`gpg --status-fd=2 -bsau KEY`), without a prompt: a key that
    # needs a passphrase nobody can type fails here rather than hanging a commit.
    why = _run([_GPG, "--batch", "--no-tty", "--pinentry-mode", "error", "-bsau", key], _PROBE)
    return f"key {key} cannot sign: {why}" if why else None


def _run(command: list[str], data: bytes = b"") -> str | None:
    """Run ``command`` (``data`` on stdin); None on success, else its last words."""
    try:
        done = subprocess.run(
            command,
            input=data,  # never the terminal's stdin: nothing may wait on a person
            capture_output=True,
            timeout=SIGNING_CHECK_TIMEOUT,
            # No terminal to ask a passphrase on: a key needing one fails, it never waits.
            start_new_session=True,
            check=False,
        )
    except FileNotFoundError:
        return f"{command[0]} is not installed"
    except subprocess.TimeoutExpired:
        return f"{command[0]} did not answer within {SIGNING_CHECK_TIMEOUT:g}s"
    if done.returncode == 0:
        return None
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    if not lines:
        return f"{command[0]} exit status {done.returncode}"
    # ssh-keygen prompts even without a terminal, and its reason follows on that line.
    return " ".join(lines[-1].rpartition(_PROMPT)[2].split())
