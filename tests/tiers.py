"""Test tiers: every test carries exactly one of three markers.

- ``unit``: pure logic. No service, no subprocess, no network: runs with
  nothing installed but the virtualenv (``pytest -m unit``).
- ``integration``: real parts (redis-server, docker-registry, git remotes,
  ``python -m watcher`` subprocesses, the Google-registry emulator, promtool,
  the Helm SDK).
- ``soak``: the long runs (tests/test_soak.py, about a minute; nothing else
  comes close); ``pytest -m "not soak"`` is the everyday run.

A module whose tests share a tier says so once, ``pytestmark = pytest.mark.unit``;
a module that mixes tiers marks each test. Collection stops with the list of
tests that carry no tier or more than one, and a ``unit`` test that starts a
process, opens an inet socket or resolves a name fails, naming what it did:
the tier cannot drift from what the test really does.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

TIERS = ("unit", "integration", "soak")


def tier_problems(items: list[pytest.Item]) -> list[str]:
    """One line per test whose tier markers are not exactly one of TIERS."""
    problems = []
    for item in items:
        found = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(found) != 1:
            what = "no tier" if not found else f"{len(found)} tiers ({', '.join(found)})"
            problems.append(f"{item.nodeid}: {what}")
    return problems


def pytest_configure() -> None:
    # GitPython looks for a git binary when imported: unit tests import modules that
    # import it without ever running git, and the unit tier must run without git.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: every collected test is checked
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    problems = tier_problems(items)
    if problems:
        raise pytest.UsageError(
            "every test carries exactly one tier marker, "
            "@pytest.mark.unit (pure logic), .integration (real services, subprocesses, "
            "network) or .soak (long runs); a module of one tier says it once with "
            "`pytestmark = pytest.mark.unit` (see tests/tiers.py):\n  " + "\n  ".join(problems)
        )


INET = (socket.AF_INET, socket.AF_INET6)


@pytest.fixture(autouse=True)
def _unit_tests_stay_pure(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a ``unit`` test, a subprocess, an inet socket or a name look-up fails the test.

    The call raises (so the test stops where it happened) and is also recorded,
    so code that swallows the error still fails the test at teardown.
    """
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    seen: list[str] = []

    def refuse(what: str) -> None:
        seen.append(what)
        raise ImpureUnitTest(f"{what}: a unit test is pure logic; mark it integration")

    def guarded(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def method(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
            if sock.family in INET:
                refuse(f"socket.{name}{args!r}")
            return original(sock, *args, **kwargs)

        return method

    def popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        refuse(f"subprocess {args!r}")

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        refuse(f"getaddrinfo({host!r})")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", popen)
        for name in ("connect", "connect_ex", "bind", "sendto"):
            patch.setattr(socket.socket, name, guarded(name, getattr(socket.socket, name)))
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield
    if seen:
        pytest.fail(
            f"unit test did {seen[0]} ({len(seen)} such call(s)); mark it integration",
            pytrace=False,
        )


class ImpureUnitTest(Exception):
    """A ``unit`` test reached for a process or the network."""
