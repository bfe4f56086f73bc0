"""The tier rules have teeth: pytest, run on small test files with this suite's
configuration and tier hooks, refuses a test with no tier, two tiers or a
misspelt marker, and fails a ``unit`` test that reaches for a process or the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # runs pytest in a subprocess

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = """\
from tests.tiers import _unit_tests_stay_pure, pytest_collection_modifyitems, pytest_configure
"""


def pytest_run(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, text in {"conftest.py": CONFTEST, **files}.items():
        (tmp_path / name).write_text(text)
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml")),
            *("--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-rA", str(tmp_path)),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_a_test_without_a_tier_or_with_two_stops_the_run(tmp_path: Path) -> None:
    result = pytest_run(
        tmp_path,
        {
            "test_some.py": (
                "import pytest\n\n"
                "def test_untiered():\n    pass\n\n"
                "@pytest.mark.unit\n@pytest.mark.integration\ndef test_both():\n    pass\n\n"
                "@pytest.mark.unit\ndef test_fine():\n    pass\n"
            )
        },
    )
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "test_some.py::test_untiered: no tier" in out
    assert "test_some.py::test_both: 2 tiers (integration, unit)" in out
    assert "test_fine" not in out.split("exactly one tier", 1)[1]


def test_a_module_tier_and_a_test_tier_are_two(tmp_path: Path) -> None:
    result = pytest_run(
        tmp_path,
        {
            "test_mod.py": (
                "import pytest\n\npytestmark = pytest.mark.unit\n\n"
                "@pytest.mark.soak\ndef test_long():\n    pass\n"
            )
        },
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "test_mod.py::test_long: 2 tiers (soak, unit)" in result.stdout + result.stderr


def test_a_misspelt_tier_is_an_error(tmp_path: Path) -> None:
    result = pytest_run(
        tmp_path,
        {"test_typo.py": "import pytest\n\n@pytest.mark.unti\ndef test_typo():\n    pass\n"},
    )
    assert result.returncode != 0
    assert "'unti' not found in `markers` configuration option" in result.stdout + result.stderr


def test_a_unit_test_that_starts_a_process_or_opens_a_socket_fails(tmp_path: Path) -> None:
    result = pytest_run(
        tmp_path,
        {
            "test_guard.py": """\
import socket
import subprocess

import pytest


@pytest.mark.unit
def test_process():
    subprocess.run(["true"], check=True)


@pytest.mark.unit
async def test_async_process():
    import asyncio
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()


@pytest.mark.unit
def test_socket():
    with socket.socket() as sock:
        sock.connect(("127.0.0.1", 9))


@pytest.mark.unit
def test_swallowed():
    try:
        subprocess.run(["true"], check=True)
    except Exception:
        pass


@pytest.mark.unit
def test_pure():
    assert sorted([2, 1]) == [1, 2]


@pytest.mark.integration
def test_real_process():
    subprocess.run(["true"], check=True)
"""
        },
    )
    out = result.stdout
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out + result.stderr
    for name in ("test_process", "test_async_process", "test_socket"):
        assert f"FAILED test_guard.py::{name} - tests.tiers.ImpureUnitTest" in out, out
    # Caught and ignored by the test: still a failure, at teardown.
    assert "ERROR test_guard.py::test_swallowed - Failed: unit test did subprocess" in out, out
    assert "PASSED test_guard.py::test_pure" in out
    assert "PASSED test_guard.py::test_real_process" in out
