"""sendfile on a real TCP connection: the socket is corked while a body goes out (full
segments only, as nginx's tcp_nopush) and uncorked at its end, so the last partial
segment leaves at once instead of after the kernel's 200 ms cork timer."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from mirror.server.io import send_file
from mirror.server.sendfailures import PeerStalled
from tests.loopback import tcp_pair


async def test_a_body_is_sent_corked_and_the_socket_uncorked_after(tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 123)  # ends on a partial segment
    path = tmp_path / "blob"
    path.write_bytes(payload)
    client, server = await tcp_pair()
    corked_during: list[int] = []
    received = bytearray()

    class Probe:
        """A pacer that only looks: is the socket corked between chunks?"""

        async def sent(self, n: int) -> None:
            corked_during.append(server.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
            await trio.lowlevel.checkpoint()

    async def read_all() -> None:
        while len(received) < len(payload):
            received.extend(await client.recv(1 << 20))

    fd = os.open(path, os.O_RDONLY)
    try:
        with client, server:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                await send_file(server, fd, 0, len(payload), pacer=Probe())  # type: ignore[arg-type]
            assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
    finally:
        os.close(fd)
    assert bytes(received) == payload
    assert corked_during and all(corked_during)


def _small_buffers(client: trio.socket.SocketType, server: trio.socket.SocketType) -> None:
    """So a reader that stops reading stops the sender after a few hundred KiB."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)


def _blob(tmp_path: Path, size: int) -> int:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(size))
    return os.open(path, os.O_RDONLY)


async def test_a_reader_that_never_reads_is_given_up_on_after_the_stall_timeout(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    fd = _blob(tmp_path, 8 * 1024 * 1024)
    client, server = await tcp_pair()
    _small_buffers(client, server)
    try:
        with client, server, trio.fail_after(600):
            started = trio.current_time()
            with pytest.raises(PeerStalled):
                await send_file(server, fd, 0, 8 * 1024 * 1024, stall_timeout=10.0)
            stalled_for = trio.current_time() - started
    finally:
        os.close(fd)
    assert 10.0 <= stalled_for <= 12.5


async def test_a_slow_reader_that_keeps_reading_is_never_cut_off(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # The kernel's wakeup after a read is not instant: without a real pause before the
    # fake clock jumps, the sender could be timed out while the wakeup is on its way.
    mock_clock.autojump_threshold = 0.05
    size = 2 * 1024 * 1024
    fd = _blob(tmp_path, size)
    client, server = await tcp_pair()
    _small_buffers(client, server)
    received = 0

    async def read_slowly() -> None:
        nonlocal received
        while received < size:
            await trio.sleep(7.0)  # under the stall timeout, each time
            # Everything there is, so the window opens wide enough to wake the sender.
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(client.fileno(), 1 << 20):
                    received += len(chunk)

    try:
        with client, server, trio.fail_after(600):
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_slowly)
                await send_file(server, fd, 0, size, stall_timeout=10.0)
            took = trio.current_time() - started
    finally:
        os.close(fd)
    assert received == size
    assert took > 3 * 10.0  # many stall timeouts long, in all


async def test_waiting_on_the_upload_budget_is_not_a_stall(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    size = 1024 * 1024
    fd = _blob(tmp_path, size)
    client, server = await tcp_pair()
    received = bytearray()

    class LongPauses:
        """A budget spent by other streams: every chunk waits longer than the stall."""

        async def sent(self, n: int) -> None:
            await trio.sleep(25.0)

    async def read_all() -> None:
        while len(received) < size:
            received.extend(await client.recv(1 << 20))

    try:
        with client, server:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                await send_file(server, fd, 0, size, stall_timeout=10.0, pacer=LongPauses())  # type: ignore[arg-type]
    finally:
        os.close(fd)
    assert len(received) == size
