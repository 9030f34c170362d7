"""`make demo`: the README's main command, end to end on a small image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import demo
from bench.__main__ import main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_pulls_through_a_peer_with_the_upstream_stopped(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "demo", "--size-mib=8", "--layers=2", f"--dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The index, the linux/amd64 manifest and config, and a gzip and a zstd layer.
    assert "all 5 items on node-2 match their digests; every one came from a peer" in (
        result.stdout
    )
    assert "debug page http://127.0.0.2:" in result.stdout


def test_a_directory_another_demo_holds_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with demo._own(tmp_path):
        status = main(["demo", f"--dir={tmp_path}"])
    assert status == 2
    assert "in use by another demo" in capsys.readouterr().out
