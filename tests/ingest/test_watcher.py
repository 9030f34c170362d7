"""The ingest watcher on a real filesystem (inotify, polling) and under a real containerd pull."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from bench.kit.containerd import ContainerdNode
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.registry import UpstreamRegistry
from bench.kit.releases import SERIES, containerd_release
from bench.kit.wan import MB, LinkSpec, WanRelay
from mirror.ingest.records import IngestChange, IngestEnded, IngestProgressed, IngestStarted
from mirror.ingest.watcher import IngestWatcher

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"
MIB = 1024 * 1024


def _start_ingest(content_root: Path, total: int) -> Path:
    directory = content_root / "ingest" / ("a" * 64)
    directory.mkdir(parents=True)
    (directory / "ref").write_text(f"k8s.io/1/layer-{DIGEST}")
    (directory / "total").write_text(str(total))
    (directory / "data").write_bytes(b"")
    return directory


async def _until(watcher: IngestWatcher, done: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not done():
            await watcher.wait_changed()


@pytest.mark.parametrize("with_ingest_dir", [True, False])
async def test_start_growth_and_end_are_seen(tmp_path: Path, with_ingest_dir: bool) -> None:
    if with_ingest_dir:
        (tmp_path / "ingest").mkdir()
    changes: list[IngestChange] = []
    watcher = IngestWatcher(tmp_path, on_change=changes.extend, rescan_interval=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        assert watcher.mode == ("inotify" if with_ingest_dir else "polling")
        directory = _start_ingest(tmp_path, 3 * MIB)
        await _until(watcher, lambda: watcher.get(DIGEST) is not None)
        with (directory / "data").open("ab") as data:
            data.write(b"x" * MIB)
            data.flush()
            await _until(watcher, lambda: watcher.get(DIGEST).size == MIB)  # type: ignore[union-attr]
        shutil.rmtree(directory)
        await _until(watcher, lambda: watcher.get(DIGEST) is None)
        if not with_ingest_dir:  # the directory now exists: inotify takes over
            await _until(watcher, lambda: watcher.mode == "inotify" or _touch(tmp_path))
        nursery.cancel_scope.cancel()
    kinds = [type(c) for c in changes]
    assert kinds[0] is IngestStarted and kinds[-1] is IngestEnded
    assert IngestProgressed in kinds


def _touch(content_root: Path) -> bool:
    (content_root / "ingest" / "touch").write_text("")
    os.unlink(content_root / "ingest" / "touch")
    return False


async def test_the_ingest_directory_removed_and_recreated(tmp_path: Path) -> None:
    (tmp_path / "ingest").mkdir()
    watcher = IngestWatcher(tmp_path, rescan_interval=60, poll_interval=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        (tmp_path / "ingest").rmdir()
        await trio.sleep(0.1)  # let the watcher see its directory go (no change to wait on)
        _start_ingest(tmp_path, 10)
        await _until(watcher, lambda: watcher.get(DIGEST) is not None)
        nursery.cancel_scope.cancel()


@dataclass
class SlowUpstream:
    node: ContainerdNode
    upstream: UpstreamRegistry
    image: GeneratedImage


@pytest.fixture(params=SERIES)
def slow_upstream(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SlowUpstream]:
    release = containerd_release(str(request.param))
    image = generate_image(
        tmp_path / "layout", name="team/slow", tag="v1", seed=7, total_size=12 * MIB, layers=3
    )
    with (
        UpstreamRegistry(tmp_path / "registry") as upstream,
        WanRelay((upstream.ip, upstream.port), LinkSpec(rate=8 * MB, rtt=0.002)) as relay,
        ContainerdNode(
            "node-1", tmp_path, containerd_binary=release.containerd, ctr_binary=release.ctr
        ) as node,
    ):
        push_image(image.layout_dir, "v1", f"{upstream.host}/team/slow:v1")
        write_hosts_toml(node.config_path, upstream.host, relay.url)
        yield SlowUpstream(node, upstream, image)


@pytest.mark.integration
async def test_a_real_containerd_pull_is_followed(slow_upstream: SlowUpstream) -> None:
    node, image = slow_upstream.node, slow_upstream.image
    changes: list[IngestChange] = []
    watcher = IngestWatcher(node.content_path, on_change=changes.extend)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        ref = image.ref(slow_upstream.upstream.host)
        await trio.to_thread.run_sync(lambda: node.pull(ref, unpack=False))
        await _until(watcher, lambda: not watcher.table.all())
        nursery.cancel_scope.cancel()
    assert watcher.mode == "inotify"
    started = {c.ingest.digest: c.ingest.total for c in changes if isinstance(c, IngestStarted)}
    for layer in image.layers:
        assert started.get(layer.digest) == layer.size
        assert node.has_blob(layer.digest)
    biggest = max(image.layers, key=lambda layer: layer.size)
    partial = [
        c.ingest.size
        for c in changes
        if isinstance(c, IngestProgressed) and c.ingest.digest == biggest.digest
    ]
    assert any(0 < size < biggest.size for size in partial), partial
    ended = {c.ingest.digest for c in changes if isinstance(c, IngestEnded)}
    assert {layer.digest for layer in image.layers} <= ended
