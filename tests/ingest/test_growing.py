"""Following a growing file: the pure core on fake time, the body over a real socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from mirror.ingest.growing import (
    Finished,
    GrowingFileBody,
    GrowthFollower,
    SendUpTo,
    SourceLost,
    WaitUntil,
)
from mirror.server.sendfailures import SourceShort


def _follower(start: int = 0, end: int = 100) -> GrowthFollower:
    return GrowthFollower(start, end, 0.0, stall_timeout=5.0, poll_interval=0.05)


def test_sends_what_is_there_then_waits_then_finishes() -> None:
    follower = _follower()
    assert follower.step(40, 1, 0.0) == SendUpTo(40)
    follower.sent(40)
    assert follower.step(40, 1, 0.01) == WaitUntil(pytest.approx(0.06))
    assert follower.step(250, 1, 0.02) == SendUpTo(100)  # never past the range's end
    follower.sent(60)
    assert follower.step(250, 1, 0.03) == Finished()


def test_a_range_starting_beyond_what_is_on_disk_waits() -> None:
    follower = _follower(start=50)
    assert isinstance(follower.step(10, 1, 0.0), WaitUntil)
    assert follower.step(70, 1, 1.0) == SendUpTo(70)


def test_truncation_is_a_lost_source() -> None:
    follower = _follower()
    follower.step(30, 1, 0.0)
    follower.sent(30)
    assert isinstance(follower.step(0, 1, 0.1), SourceLost)


def test_shrinking_below_what_was_seen_is_lost_even_ahead_of_position() -> None:
    follower = _follower(start=0)
    follower.step(60, 1, 0.0)
    follower.sent(10)
    assert isinstance(follower.step(20, 1, 0.1), SourceLost)


def test_a_hole_is_a_lost_source_even_when_the_size_grew_back() -> None:
    follower = _follower()
    follower.step(30, 1, 0.0, hole=30)
    follower.sent(30)
    # Truncated to 0 and written past before anyone looked: the size never shrank.
    assert isinstance(follower.step(50, 1, 0.1, hole=0), SourceLost)


def test_unlinked_before_the_end_is_lost_once_drained() -> None:
    follower = _follower()
    assert follower.step(30, 0, 0.0) == SendUpTo(30)  # what is there still goes out
    follower.sent(30)
    assert follower.step(30, 0, 0.1) == SourceLost("removed at 30 of 100 bytes")


def test_stall_timeout_counts_from_the_last_growth() -> None:
    follower = _follower()
    follower.step(10, 1, 0.0)
    follower.sent(10)
    assert follower.step(10, 1, 4.0) == WaitUntil(pytest.approx(4.05))
    assert follower.step(20, 1, 4.5) == SendUpTo(20)
    follower.sent(10)
    assert follower.step(20, 1, 9.4) == WaitUntil(pytest.approx(9.45))
    assert follower.step(20, 1, 9.5) == SourceLost("no growth for 5s at 20 bytes")


def test_wait_never_passes_the_stall_deadline() -> None:
    follower = GrowthFollower(0, 100, 0.0, stall_timeout=1.0, poll_interval=10.0)
    assert follower.step(0, 1, 0.5) == WaitUntil(pytest.approx(1.0))


async def _drain(sock: trio.socket.SocketType, into: bytearray) -> None:
    while True:
        data = await sock.recv(1 << 20)
        if not data:
            return
        into += data


async def _serve(body: GrowingFileBody, grow: object) -> tuple[bytes, BaseException | None]:
    left, right = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    received = bytearray()
    failure: BaseException | None = None
    with left, right:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, right, received)
            nursery.start_soon(grow)  # type: ignore[arg-type]
            try:
                await body.send(left, stall_timeout=5.0)
            except SourceShort as exc:
                failure = exc
            finally:
                body.close()
                left.shutdown(socket.SHUT_WR)
    return bytes(received), failure


def _body(path: Path, length: int, changed: trio.Event, offset: int = 0) -> GrowingFileBody:
    fd = os.open(path, os.O_RDONLY)
    return GrowingFileBody(
        fd, offset, length, changed.wait, growth_stall_timeout=1.0, poll_interval=0.02
    )


async def test_a_file_growing_then_committed_is_sent_whole(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"")
    chunks = [os.urandom(256 * 1024) for _ in range(8)]
    changed = trio.Event()

    async def grow() -> None:
        with data.open("ab") as out:
            for chunk in chunks:
                await trio.sleep(0.01)
                out.write(chunk)
                out.flush()
        os.rename(data, tmp_path / "blob")  # commit: same inode

    received, failure = await _serve(_body(data, 8 * 256 * 1024, changed), grow)
    assert failure is None
    assert received == b"".join(chunks)


async def test_a_range_of_a_growing_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    payload = os.urandom(100_000)
    data.write_bytes(payload[:10])
    changed = trio.Event()

    async def grow() -> None:
        await trio.sleep(0.05)
        with data.open("ab") as out:
            out.write(payload[10:])

    received, failure = await _serve(_body(data, 50_000, changed, offset=30_000), grow)
    assert failure is None and received == payload[30_000:80_000]


@pytest.mark.parametrize("fault", ["truncate", "truncate and write past", "unlink", "stall"])
async def test_a_lost_source_fails_the_body(tmp_path: Path, fault: str) -> None:
    data = tmp_path / "data"
    # Whole file-system blocks: a hole is block-sized (containerd writes 1 MiB steps).
    data.write_bytes(b"x" * 65536)
    changed = trio.Event()

    async def grow() -> None:
        await trio.sleep(0.05)
        if fault == "truncate":
            os.truncate(data, 0)
        elif fault == "truncate and write past":
            # As containerd goes on writing at its own offset: the size grows back.
            with data.open("r+b") as out:
                out.truncate(0)
                out.seek(65536)
                out.write(b"y" * 8192)
        elif fault == "unlink":
            data.unlink()

    with trio.fail_after(10):
        received, failure = await _serve(_body(data, 100_000, changed), grow)
    assert isinstance(failure, SourceShort)
    assert received == b"x" * 65536  # what was there went out; the rest never will
