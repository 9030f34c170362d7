"""A peer's GET for a blob still downloading, through the real hot path over loopback.

The content store is a directory laid out as containerd's (`ingest/<hash>/{ref,
total,data}`, `blobs/sha256/`); the test plays containerd's part by writing
`data`, renaming it into `blobs/` on commit, truncating or unlinking it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from mirror.ingest.serving import INFLIGHT_HEADER, InflightBlobs
from mirror.ingest.watcher import IngestWatcher
from mirror.mirroring.peer import PeerResponse, request_head
from mirror.server.listener import RegistryServer
from mirror.server.localstore import LocalStore
from mirror.server.registry import FORWARDS_HEADER, MIRRORED_HEADER, RegistryHandler
from mirror.server.streamcap import StreamCap

BLOB = os.urandom(2 * 1024 * 1024 + 5)
HEX = hashlib.sha256(BLOB).hexdigest()
DIGEST = f"sha256:{HEX}"
TARGET = f"/v2/team/app/blobs/{DIGEST}"
PEER = [(MIRRORED_HEADER, "true")]


class NoTags:
    async def resolve(self, image_name: str) -> None:
        return None


def _start_ingest(root: Path, name: str = "c" * 64) -> Path:
    directory = root / "ingest" / name
    directory.mkdir(parents=True)
    (directory / "ref").write_text(f"k8s.io/1/layer-{DIGEST}")
    (directory / "total").write_text(str(len(BLOB)))
    (directory / "data").write_bytes(b"")
    return directory / "data"


def _commit(root: Path, data: Path) -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    os.rename(data, blobs / HEX)
    shutil.rmtree(data.parent)


async def _grow(data: Path, until: int, step: int = 256 * 1024, pause: float = 0.01) -> None:
    with data.open("ab") as out:
        position = out.tell()
        while position < until:
            await trio.sleep(pause)
            chunk = BLOB[position : min(position + step, until)]
            out.write(chunk)
            out.flush()
            position += len(chunk)


@asynccontextmanager
async def _node(
    root: Path,
    *,
    cap: int = 3,
    expecting: frozenset[str] = frozenset(),
    forwards: Callable[[str], bool] | None = None,
) -> AsyncIterator[tuple[int, InflightBlobs]]:
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        watcher = IngestWatcher(root, coalesce=0.001)
        await nursery.start(watcher.run)
        inflight = InflightBlobs(
            watcher, root, expecting=lambda d: d in expecting, growth_stall_timeout=1.0
        )
        handler = RegistryHandler(
            LocalStore(root, NoTags()),
            inflight=inflight,
            stream_cap=StreamCap(cap),
            forwards=forwards,
        )
        server = RegistryServer(handler)
        await nursery.start(server.run, "127.0.0.1", 0)
        yield int(server.addresses[0][1]), inflight
        nursery.cancel_scope.cancel()


async def _get(
    port: int, headers: list[tuple[str, str]] = PEER, method: str = "GET"
) -> PeerResponse:
    return await request_head("127.0.0.1", port, method, TARGET, headers)


async def _read(peer: PeerResponse) -> tuple[bytes, str]:
    """The body as far as it came, and how it ended: "clean", "eof" (short) or "reset"."""
    body = bytearray(peer.early_body)
    try:
        while len(body) < peer.content_length:
            chunk = await peer.sock.recv(1 << 20)
            if not chunk:
                return bytes(body), "eof"
            body += chunk
    except ConnectionResetError:
        return bytes(body), "reset"
    finally:
        peer.close()
    return bytes(body), "clean"


async def _body(peer: PeerResponse) -> tuple[bytes, bool]:
    body, ended = await _read(peer)
    return body, ended == "clean"


async def _wait_seen(inflight: InflightBlobs) -> None:
    with trio.fail_after(5):
        while inflight.view.get(DIGEST) is None:
            await inflight.view.wait_changed()


async def test_a_growing_blob_is_served_whole_across_its_commit(tmp_path: Path) -> None:
    data = _start_ingest(tmp_path)
    async with _node(tmp_path) as (port, inflight):
        await _wait_seen(inflight)
        peer = await _get(port)
        assert peer.status == 200 and peer.content_length == len(BLOB)
        assert peer.header(INFLIGHT_HEADER.lower()) == f"0/{len(BLOB)}"
        async with trio.open_nursery() as nursery:

            async def containerd() -> None:
                await _grow(data, len(BLOB))
                _commit(tmp_path, data)

            nursery.start_soon(containerd)
            body, clean = await _body(peer)
    assert clean and body == BLOB


async def test_ranges_wait_for_their_bytes_and_past_the_total_is_416(tmp_path: Path) -> None:
    data = _start_ingest(tmp_path)
    async with _node(tmp_path) as (port, inflight):
        await _wait_seen(inflight)
        past = await _get(port, [*PEER, ("Range", f"bytes={len(BLOB)}-")])
        assert past.status == 416 and past.header("content-range") == f"bytes */{len(BLOB)}"
        past.close()
        peer = await _get(port, [*PEER, ("Range", "bytes=1000000-1000999")])
        assert peer.status == 206 and peer.content_length == 1000
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_grow, data, len(BLOB))
            body, clean = await _body(peer)
    assert clean and body == BLOB[1000000:1001000]


async def test_the_nodes_own_containerd_is_never_served_its_own_download(tmp_path: Path) -> None:
    data = _start_ingest(tmp_path)
    data.write_bytes(BLOB[:1000])
    async with _node(tmp_path) as (port, inflight):
        await _wait_seen(inflight)
        peer = await _get(port, [])
        assert peer.status == 404
        peer.close()


@pytest.mark.parametrize("fault", ["truncate", "unlink"])
async def test_a_download_lost_midway_resets_the_peer(tmp_path: Path, fault: str) -> None:
    data = _start_ingest(tmp_path)
    async with _node(tmp_path) as (port, inflight):
        await _wait_seen(inflight)
        peer = await _get(port)
        assert peer.status == 200
        async with trio.open_nursery() as nursery:

            async def containerd() -> None:
                await _grow(data, len(BLOB) // 2)
                await trio.sleep(0.1)
                if fault == "truncate":
                    os.truncate(data, 0)
                else:
                    data.unlink()

            nursery.start_soon(containerd)
            with trio.fail_after(10):
                body, ended = await _read(peer)
    assert ended == "reset" and len(body) < len(BLOB)
    assert body == BLOB[: len(body)]


async def test_a_download_truncated_and_written_past_is_not_served(tmp_path: Path) -> None:
    """The size grew back, but the bytes before containerd's offset are a hole of
    zeros now: a new peer is not served it (it would get zeros)."""
    data = _start_ingest(tmp_path)
    await _grow(data, len(BLOB) // 2)
    with data.open("r+b") as out:
        out.truncate(0)
        out.seek(len(BLOB) // 2)
        out.write(BLOB[len(BLOB) // 2 : len(BLOB) // 2 + 4096])
    async with _node(tmp_path) as (port, inflight):
        await _wait_seen(inflight)
        peer = await _get(port)
        body, _ = await _body(peer)
    assert peer.status == 404 and b"\0" * 4096 not in body


async def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 100)
    directory = tmp_path / "store" / "ingest" / ("d" * 64)
    directory.mkdir(parents=True)
    (directory / "ref").write_text(f"k8s.io/1/layer-{DIGEST}")
    (directory / "total").write_text("100")
    (directory / "data").symlink_to(secret)
    async with _node(tmp_path / "store", expecting=frozenset({DIGEST})) as (port, _):
        peer = await _get(port)
        body, _ = await _body(peer)
    assert peer.status == 404 and b"s" * 100 not in body


async def test_past_the_stream_cap_a_peer_is_told_busy(tmp_path: Path) -> None:
    data = _start_ingest(tmp_path)
    async with _node(tmp_path, cap=1) as (port, inflight):
        await _wait_seen(inflight)
        first = await _get(port)
        assert first.status == 200
        second = await _get(port)
        assert second.status == 503 and second.header("retry-after") == "1"
        second.close()
        head = await _get(port, method="HEAD")  # a HEAD holds no stream
        assert head.status == 200 and head.content_length == len(BLOB)
        head.close()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_grow, data, len(BLOB))
            body, clean = await _body(first)
        assert clean and body == BLOB
        with trio.fail_after(5):
            while True:  # the first stream's slot comes back when its body is done
                third = await _get(port)
                if third.status == 200:
                    break
                third.close()
                await trio.sleep(0.01)
        body, clean = await _body(third)
        assert clean and body == BLOB


async def test_a_download_this_node_does_not_pass_on_is_busy_until_committed(
    tmp_path: Path,
) -> None:
    data = _start_ingest(tmp_path)
    async with _node(tmp_path, forwards=lambda digest: False) as (port, inflight):
        await _wait_seen(inflight)
        for method in ("GET", "HEAD"):
            peer = await _get(port, method=method)
            assert peer.status == 503 and peer.header("retry-after") == "1"
            peer.close()
        await _grow(data, len(BLOB))
        _commit(tmp_path, data)
        peer = await _get(port)  # whole: served to anyone
        body, clean = await _body(peer)
    assert peer.status == 200 and clean and body == BLOB


async def test_a_full_node_ends_a_leaf_for_a_peer_that_passes_the_blob_on(
    tmp_path: Path,
) -> None:
    data = _start_ingest(tmp_path)
    passes_on = [*PEER, (FORWARDS_HEADER, "1")]
    async with _node(tmp_path, cap=1, forwards=lambda digest: True) as (port, inflight):
        await _wait_seen(inflight)
        await _grow(data, len(BLOB) // 2)
        leaf = await _get(port)
        assert leaf.status == 200
        other_leaf = await _get(port)
        assert other_leaf.status == 503  # full, and it would not pass the blob on
        other_leaf.close()
        forwarder = await _get(port, passes_on)
        assert forwarder.status == 200
        with trio.fail_after(10):
            body, ended = await _read(leaf)
        assert ended == "reset" and body == BLOB[: len(body)] and len(body) < len(BLOB)
        third = await _get(port, passes_on)
        assert third.status == 503  # no leaf left to end
        third.close()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_grow, data, len(BLOB))
            body, clean = await _body(forwarder)
        assert clean and body == BLOB


async def test_a_claimant_waits_briefly_for_its_download_to_appear(tmp_path: Path) -> None:
    async with (
        _node(tmp_path, expecting=frozenset({DIGEST})) as (port, _),
        trio.open_nursery() as nursery,
    ):

        async def containerd() -> None:
            await trio.sleep(0.3)
            data = _start_ingest(tmp_path)
            await _grow(data, len(BLOB))

        nursery.start_soon(containerd)
        peer = await _get(port)
        assert peer.status == 200
        body, clean = await _body(peer)
    assert clean and body == BLOB
