"""`python -m bench soak` runs its phases end to end on a real 3-node cluster (a
short run: the figures come from a long one), and no phase draws a 5xx."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main

pytestmark = pytest.mark.integration


def test_a_short_soak_runs_every_phase_without_a_5xx(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    status = main(
        [
            "soak",
            "--phase-seconds=2",
            "--settle-seconds=1",
            "--image-mib=8",
            "--idle-clients=100",
            "--slow-clients=4",
            "--flood-records=2000",
            f"--out={out}",
            f"--chart={tmp_path / 'soak.png'}",
            f"--dir={tmp_path / 'work'}",
        ]
    )
    assert status == 0
    result = json.loads(out.read_text())
    phases = [report["phase"] for report in result["reports"]]
    expected = ["peer-pulls", "manifest-flood", "idle-slow-clients", "record-flood"]
    assert phases == expected * 2  # node 1 (the holder) and node 2 (the relay)
    assert [report["server_errors"] for report in result["reports"]] == [0] * 8
    assert result["notes"]["record-flood: datagrams sent"] == 2000
    # A member's flood is authentic: it reaches node 1's store (and its bounds).
    assert result["notes"]["record-flood: records stored on node-1"] > 1000
    assert (tmp_path / "soak.png").stat().st_size > 0
