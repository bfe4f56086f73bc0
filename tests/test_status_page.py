"""The status model and the page: states and reasons per block, the JSON document and
back, and HTML that escapes what it shows and filters server-side. Pure: no server."""

from __future__ import annotations

import re

import pytest

from watcher.blocks import BlockId, RawBlock
from watcher.config import Defaults
from watcher.gitops.discovery import FoundBlock, Problem
from watcher.references import canonical_name
from watcher.steer.holds import Stamp, Steer
from watcher.steer.status import build, from_json
from watcher.strategies import parse_policy
from watcher.web import page

pytestmark = pytest.mark.unit

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
ADA = Stamp("a" * 40, "Ada <ada@example.com>", 1_700_000_000)


def found(branch: str, name: str, steer: Steer, watch: object = None) -> FoundBlock:
    raw = RawBlock(0, ("image",), 3, f"eu.gcr.io/p/{name}", "master", D1, None, watch)
    policy = parse_policy(watch, Defaults())
    return FoundBlock(
        BlockId(branch, f"apps/{name}/values.yaml", ("image",)),
        raw,
        canonical_name(raw.repository),
        policy,
        steer,
    )


BLOCKS = [
    found("environment/a", "api", Steer("held", "shasum", D1, "until-new-build", D2, None, ADA)),
    found("environment/a", "web", Steer("following", "shasum", D1)),
    found("environment/a", "db", Steer("pinned", "overrideTag", "fix-1")),
    found("environment/b", "api", Steer("following", "shasum", D1)),
    found("environment/b", "off", Steer("off", None), {"strategy": "off"}),
]
PROBLEM = Problem("environment/b", "apps/x/values.yaml", 7, "YAML syntax error: <script>x</script>")


def test_states_reasons_and_failures() -> None:
    failures = {
        BLOCKS[1].id: "tag 'master' not found",  # following -> failing
        BLOCKS[0].id: "registry unavailable",  # held stays held, the reason says it
    }
    status = build(
        {"environment/a": "c" * 40, "environment/b": "d" * 40}, BLOCKS, [PROBLEM], failures
    )
    rows = {(e.branch, r.block): r for e in status.environments for r in e.rows}
    held = rows[("environment/a", "apps/api/values.yaml#image")]
    assert held.state == "held" and held.replaced == D2 and held.changed == ADA
    # Digests are quoted short in sentences, whole in the row's values.
    assert f"held at shasum {D1[:19]} by Ada <ada@example.com>" in held.reason
    assert f"replacing the watcher's {D2[:19]};" in held.reason
    assert "until tag master points at a new build" in held.reason
    assert held.reason.endswith("look-ups failing: registry unavailable")
    assert rows[("environment/a", "apps/web/values.yaml#image")].state == "failing"
    assert rows[("environment/a", "apps/web/values.yaml#image")].reason == "tag 'master' not found"
    assert rows[("environment/a", "apps/db/values.yaml#image")].reason.startswith(
        "pinned to overrideTag fix-1;"
    )
    assert rows[("environment/b", "apps/off/values.yaml#image")].state == "off"
    assert status.counts() == {"following": 1, "pinned": 1, "held": 1, "off": 1, "failing": 1}
    assert status.environments[1].problems[0].line == 7
    # The JSON document reads back as the same status.
    assert from_json(status.to_json()) == status


def test_the_page_escapes_everything_it_shows_and_runs_no_script() -> None:
    status = build({"environment/a": "c" * 40, "environment/b": "d" * 40}, BLOCKS, [PROBLEM])
    html = page.render(status)
    assert "<script" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html
    assert "Ada &lt;ada@example.com&gt;" in html
    assert html.count("<table>") == 2  # one per environment (no budgets given)
    assert "<a href='#env-environment-a'>environment/a</a>" in html
    assert re.search(r"<td class=held>held</td>", html)
    # Long digests are shortened on screen and whole in the title.
    assert f"title='{D1}'" in html and "sha256:111111111111…<" in html


def test_the_page_filters_by_state_and_branch() -> None:
    status = build({"environment/a": "c" * 40, "environment/b": "d" * 40}, BLOCKS, [PROBLEM])
    held = page.render(status, state="held")
    assert "apps/api/values.yaml#image" in held and "apps/web/values.yaml" not in held
    assert "Showing state held" in held
    only_b = page.render(status, branch="environment/b*")
    assert "environment/b" in only_b and "id='env-environment-a'" not in only_b
    assert "apps/x/values.yaml:7" in only_b  # problems are listed with their line
    assert "No environment branch matches" in page.render(status, branch="nope/*")
