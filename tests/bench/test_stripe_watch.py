"""`bench stripe`'s watch on containerd's content store, on real files."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.stripe import ArrivalWatch, write_scratch

DIGEST = "sha256:" + "ab" * 32


def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the watch never saw it"
        time.sleep(0.01)


def test_the_watch_sees_the_ingest_open_grow_and_commit(tmp_path: Path) -> None:
    content = tmp_path / "content"
    (content / "ingest" / "other").mkdir(parents=True)
    (content / "ingest" / "other" / "ref").write_text("k8s.io/1/layer-sha256:" + "cd" * 32)
    (content / "blobs" / "sha256").mkdir(parents=True)
    ours = content / "ingest" / "0123"
    with ArrivalWatch(content, DIGEST) as watch:
        time.sleep(0.05)
        assert watch.requested is None  # another layer's ingest is not ours
        ours.mkdir()
        (ours / "data").write_bytes(b"")
        (ours / "ref").write_text("k8s.io/7/layer-" + DIGEST)
        _wait(lambda: watch.requested is not None)
        (ours / "data").write_bytes(b"x" * 1000)
        _wait(lambda: any(size == 1000 for _, size in watch.growth))
        (ours / "data").rename(content / "blobs" / "sha256" / ("ab" * 32))
        _wait(lambda: watch.arrived is not None)
    assert watch.requested is not None and watch.arrived is not None
    assert watch.arrived > watch.requested
    sizes = [size for _, size in watch.growth]
    assert sizes == sorted(sizes) and sizes[-1] == 1000


def test_the_scratch_file_is_written_then_dropped(tmp_path: Path) -> None:
    seconds = write_scratch(tmp_path, 20 * 1024 * 1024)
    assert seconds > 0
    assert list(tmp_path.iterdir()) == []
