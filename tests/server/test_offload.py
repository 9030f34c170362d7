"""A large body's sendfile in a worker thread, on real TCP connections and real threads:
whole and correct, the socket given back non-blocking, a stalled reader given up on,
a cancelled send ended at once without leaking a descriptor, a short file noticed, and
the loop's own path taken when every thread is busy."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest
import trio

from mirror.server import offload
from mirror.server.io import send_file
from mirror.server.sendfailures import PeerStalled, SourceShort
from tests.loopback import tcp_pair

SIZE = offload.OFFLOAD_MIN + 12345


def _blob(tmp_path: Path, size: int = SIZE) -> tuple[bytes, int]:
    payload = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(payload)
    return payload, os.open(path, os.O_RDONLY)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _send_timeout(sock: trio.socket.SocketType) -> tuple[int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.calcsize("ll"))
    seconds, micros = struct.unpack("ll", raw)
    return seconds, micros


def _stop_reading(client: trio.socket.SocketType, server: trio.socket.SocketType) -> None:
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)


async def test_a_large_body_goes_out_whole_from_a_thread_and_the_socket_is_given_back(
    tmp_path: Path,
) -> None:
    payload, fd = _blob(tmp_path)
    client, server = await tcp_pair()
    received = bytearray()
    threads_busy: list[int] = []

    async def read_all() -> None:
        while len(received) < len(payload):
            threads_busy.append(offload.body_threads().borrowed_tokens)
            received.extend(await client.recv(1 << 20))

    try:
        with client, server, trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                sent = await send_file(server, fd, 0, len(payload), stall_timeout=10.0)
            assert sent == len(payload)
            assert os.get_blocking(server.fileno()) is False
            assert _send_timeout(server) == (0, 0)
            assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
    finally:
        os.close(fd)
    assert bytes(received) == payload
    assert max(threads_busy) == 1  # it was a worker thread that sent it
    assert offload.body_threads().borrowed_tokens == 0


async def test_a_reader_that_never_reads_is_given_up_on(tmp_path: Path) -> None:
    _, fd = _blob(tmp_path)
    client, server = await tcp_pair()
    _stop_reading(client, server)
    try:
        with client, server, trio.fail_after(30):
            with pytest.raises(PeerStalled):
                await send_file(server, fd, 0, SIZE, stall_timeout=0.5)
            assert os.get_blocking(server.fileno()) is False
    finally:
        os.close(fd)
    assert offload.body_threads().borrowed_tokens == 0


async def test_a_cancelled_send_ends_its_thread_and_leaks_no_descriptor(tmp_path: Path) -> None:
    before = _open_fds()
    _, fd = _blob(tmp_path)
    client, server = await tcp_pair()
    _stop_reading(client, server)
    try:
        with client, server, trio.fail_after(30):
            with trio.move_on_after(0.3) as scope:
                await send_file(server, fd, 0, SIZE, stall_timeout=60.0)
            assert scope.cancelled_caught
            # The thread's call was ended by the shutdown: the peer sees the end now,
            # not a minute later when the stall timeout would have come.
            while await client.recv(1 << 20):
                pass
        # The thread closes its copies of both descriptors once its call returns; that
        # is no event a task can wait on.
        while offload.body_threads().borrowed_tokens or _open_fds() > before + 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
    finally:
        os.close(fd)
    assert _open_fds() == before


async def test_a_file_shorter_than_promised_is_noticed(tmp_path: Path) -> None:
    payload, fd = _blob(tmp_path)
    client, server = await tcp_pair()
    received = bytearray()

    async def read_all() -> None:
        while data := await client.recv(1 << 20):
            received.extend(data)

    try:
        with client, server, trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                with pytest.raises(SourceShort):
                    await send_file(server, fd, 0, SIZE + 4096, stall_timeout=10.0)
                server.shutdown(socket.SHUT_WR)
    finally:
        os.close(fd)
    assert bytes(received) == payload


async def _send_whole(tmp_path: Path) -> tuple[bytes, bytes]:
    """A large blob through `send_file` to a reader of every byte: (sent, received)."""
    payload, fd = _blob(tmp_path)
    client, server = await tcp_pair()
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(payload):
            received.extend(await client.recv(1 << 20))

    try:
        with client, server, trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                await send_file(server, fd, 0, len(payload), stall_timeout=10.0)
    finally:
        os.close(fd)
    return payload, bytes(received)


async def test_with_every_thread_busy_a_body_goes_through_the_loop(tmp_path: Path) -> None:
    threads = offload.body_threads()
    holders = [object() for _ in range(int(threads.total_tokens))]
    for holder in holders:
        threads.acquire_on_behalf_of_nowait(holder)
    assert not offload.offload_applies(SIZE)
    try:
        payload, received = await _send_whole(tmp_path)
    finally:
        for holder in holders:
            threads.release_on_behalf_of(holder)
    assert received == payload
    assert offload.offload_applies(SIZE)


async def test_without_a_descriptor_to_spare_the_body_goes_through_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_descriptors(fd: int) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "dup", no_descriptors)
    try:
        payload, received = await _send_whole(tmp_path)
    finally:
        monkeypatch.undo()
    assert received == payload


async def test_a_send_cancelled_before_its_thread_began_leaks_no_descriptor(
    tmp_path: Path,
) -> None:
    before = _open_fds()
    _, fd = _blob(tmp_path)
    client, server = await tcp_pair()
    try:
        with client, server:
            with trio.CancelScope() as scope:
                scope.cancel()
                await send_file(server, fd, 0, SIZE, stall_timeout=10.0)
            assert scope.cancelled_caught
            assert os.get_blocking(server.fileno()) is False
    finally:
        os.close(fd)
    assert offload.body_threads().borrowed_tokens == 0
    assert _open_fds() == before
