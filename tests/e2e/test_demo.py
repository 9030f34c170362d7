"""`make demo` (python -m bench demo) runs to the end and exits 0; a second demo on
the same directory is refused instead of sharing its sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import demo
from bench.__main__ import main

pytestmark = pytest.mark.integration


def test_the_demo_runs_to_the_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--size-mib=8", "--layers=2", f"--dir={tmp_path}"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "debug page http://127.0.0.2:" in out
    assert "match their digests; every one came from a peer" in out


def test_a_directory_another_demo_holds_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with demo._own(tmp_path):
        status = main(["demo", f"--dir={tmp_path}"])
    assert status == 2
    assert "in use by another demo" in capsys.readouterr().out
