"""`watcher check` reports each block with a bad `watch` by branch, file and line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.conftest import make_remote
from watcher.cli import main

pytestmark = pytest.mark.integration

VALUES = """\
good:
  repository: eu.gcr.io/p/api
  tag: master
  watch: {strategy: newest, tags: 'main-.*'}
unknown:
  repository: eu.gcr.io/p/api
  tag: master
  watch: {strategy: latest}
regex:
  repository: eu.gcr.io/p/api
  tag: master
  watch:
    strategy: newest
    tags: 'fixes_[('
constraint:
  repository: eu.gcr.io/p/api
  tag: master
  watch: {strategy: semver, semver: '~>1.4 || 2'}
unquoted_off:
  repository: eu.gcr.io/p/web
  tag: master
  watch: {strategy: off}
semver_ok:
  repository: eu.gcr.io/p/web
  tag: master
  watch: {strategy: semver, semver: '>=2, <3'}
"""


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_check_reports_bad_watch_blocks_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = make_remote(
        tmp_path,
        {
            "environment/b2c1": {"apps/api/values.yaml": VALUES},
            "environment/b2b1": {"apps/api/values.yaml": VALUES.split("unknown:")[0]},
        },
    )
    config = tmp_path / "shards.yaml"
    config.write_text(
        f"""
registries:
  - {{host: "*.gcr.io", api: google, auth: anonymous}}
git:
  url: {remote.url}
  branches: ["environment/*"]
  files: ["apps/*/values.yaml"]
  workdir: {tmp_path / "clone"}
"""
    )
    code = main(["check", "--config", str(config), "--log-level", "error"])
    out, err = capsys.readouterr()
    assert code == 2
    problems = [line for line in err.splitlines() if line.startswith("environment/")]
    prefix = "environment/b2c1:apps/api/values.yaml"
    assert len(problems) == 3, err
    unknown, regex, constraint = problems
    assert unknown.startswith(f"{prefix}:6: ")
    assert re.search(r"watch\.strategy: must be one of .*not 'latest'", unknown)
    assert regex.startswith(f"{prefix}:10: ")
    assert "watch.tags: invalid regex 'fixes_[('" in regex
    assert constraint.startswith(f"{prefix}:16: ")
    assert "watch.semver: not a semver constraint" in constraint
    # The valid blocks (off unquoted among them) are counted: 3 + 1 on the other branch.
    assert "2 branch(es), 2 image(s), 4 valid block(s), 3 problem(s)" in out
