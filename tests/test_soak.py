"""The soak, short: three daemons through every fault kind in compressed time.

Promises (each a figure the soak reports, asserted here): never over the quota
(windows over the cap: 0), never lose a person's commit (human commits lost: 0),
every moved tag reflected within two intervals once faults clear (0 not
reflected), no crash (no replica died unexpectedly; every SIGTERM exit 0 < 10 s).
The long run: ``python -m tests.soak --intervals 200 --replicas 3``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak import FAULTS, soak

pytestmark = pytest.mark.soak


async def test_short_soak_keeps_every_promise(tmp_path: Path) -> None:
    report = await soak(tmp_path, intervals=len(FAULTS), replicas=3, interval=2.0, images=6)
    print(report.summary())
    assert set(report.faults) == set(FAULTS)
    assert report.windows_over_cap == 0
    assert report.human_commits_lost == 0
    assert report.moved_tags_not_reflected == 0, report.summary()
    assert report.crashes == 0
    assert all(code == 0 and seconds < 10 for _, code, seconds in report.exits), report.exits
