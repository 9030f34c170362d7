"""The connection shell on a real socket pair: yielding, deadlines and drain."""

from __future__ import annotations

import contextlib
import errno
import logging

import pytest
import trio
import trio.testing

from mirror.server.connection import ConnectionConfig, Drain, serve_connection
from mirror.server.request import Request
from mirror.server.response import Response

GET = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"


async def _read_until_closed(sock: trio.socket.SocketType) -> bytes:
    chunks = []
    while chunk := await sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_a_pipelined_burst_yields_between_responses() -> None:
    ticks = 0
    seen: list[int] = []

    async def handler(request: Request) -> Response:
        seen.append(ticks)
        return Response(200, [], b"ok")  # never waits: the shape of a prepared manifest

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    server, client = trio.socket.socketpair()
    with client:
        await client.send(GET * 4 + b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await serve_connection(server, handler, ConnectionConfig(), Drain())
            nursery.cancel_scope.cancel()
        raw = await _read_until_closed(client)
    assert raw.count(b"HTTP/1.1 200 OK") == 5
    assert len(seen) == 5
    # Trio runs each runnable task once per scheduling batch, in a varying order, so
    # one yield per response lets the ticker run at least len - 2 times across them.
    assert seen[-1] - seen[0] >= len(seen) - 2, seen


async def test_an_incomplete_head_gets_408_at_its_deadline(
    mock_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: Request) -> Response:
        raise AssertionError("no request should reach the handler")

    server, client = trio.socket.socketpair()
    with client:
        await client.send(b"GET /v2/ HTTP/1.1\r\nHost: slow")
        started = trio.current_time()
        await serve_connection(server, handler, ConnectionConfig(head_timeout=5.0), Drain())
        assert trio.current_time() - started == 5.0
        raw = await _read_until_closed(client)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close" in raw


async def test_an_idle_connection_closes_after_idle_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: Request) -> Response:
        return Response(200, [], b"ok")

    server, client = trio.socket.socketpair()
    with client:
        await client.send(GET)
        started = trio.current_time()
        await serve_connection(server, handler, ConnectionConfig(idle_timeout=7.0), Drain())
        assert trio.current_time() - started == 7.0
        raw = await _read_until_closed(client)
    assert raw.count(b"HTTP/1.1 200 OK") == 1


async def test_drain_closes_idle_connections_and_finishes_busy_ones(
    mock_clock: trio.testing.MockClock,
) -> None:
    drain = Drain()
    release = trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            await release.wait()
        return Response(200, [], b"ok")

    idle_server, idle_client = trio.socket.socketpair()
    busy_server, busy_client = trio.socket.socketpair()
    with idle_client, busy_client:
        await busy_client.send(b"GET /slow HTTP/1.1\r\n\r\n" + GET)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, idle_server, handler, ConnectionConfig(), drain)
            nursery.start_soon(serve_connection, busy_server, handler, ConnectionConfig(), drain)
            await trio.sleep(1.0)
            drain.start()
            idle_raw = await _read_until_closed(idle_client)
            assert trio.current_time() == 1.0
            release.set()
        busy_raw = await _read_until_closed(busy_client)
    assert idle_raw == b""
    # The in-flight response is finished, says it is the last, and the pipelined one waits.
    assert busy_raw.count(b"HTTP/1.1 200 OK") == 1
    assert b"Connection: close" in busy_raw
    assert not drain.cores


async def _exchange(data: bytes, handler_status: int = 200) -> tuple[bytes, list[str]]:
    """Send `data` at once, serve the connection to its end: (bytes back, methods seen)."""
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.method)
        if request.method == "CONNECT":
            return Response(405, [], b"no", close=True)
        return Response(handler_status, [], b"ok")

    server, client = trio.socket.socketpair()
    with client:
        await client.send(data)
        with trio.fail_after(5):
            await serve_connection(server, handler, ConnectionConfig(), Drain())
        raw = await _read_until_closed(client)
    return raw, seen


async def test_an_upgrade_request_is_answered_then_the_connection_closes() -> None:
    upgrade = b"GET /v2/ HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    raw, seen = await _exchange(upgrade + GET)
    # Answered without the upgrade; what was pipelined behind it is never silently lost
    # on an open connection: the close tells the client to send it again.
    assert seen == ["GET"]
    assert raw.count(b"HTTP/1.1 200 OK") == 1 and b"Connection: close" in raw


async def test_connect_is_refused_and_closes() -> None:
    raw, seen = await _exchange(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert seen == ["CONNECT"]
    assert raw.startswith(b"HTTP/1.1 405")


async def test_a_client_trickling_empty_lines_is_cut_at_the_head_deadline(
    mock_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: Request) -> Response:
        raise AssertionError("no request should reach the handler")

    server, client = trio.socket.socketpair()

    async def trickle() -> None:
        with contextlib.suppress(OSError):
            while True:
                await client.send(b"\r\n")
                await trio.sleep(3.0)

    with client:
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            config = ConnectionConfig(head_timeout=5.0, idle_timeout=60.0)
            await serve_connection(server, handler, config, Drain())
            closed_at = trio.current_time() - started
            nursery.cancel_scope.cancel()
        raw = await _read_until_closed(client)
    # Cut by the head deadline from the first empty line, long before the idle timeout.
    assert closed_at == 5.0
    assert raw.startswith(b"HTTP/1.1 408 ")


async def test_running_out_of_descriptors_answers_503_with_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exhausted: list[bool] = []

    async def handler(request: Request) -> Response:
        raise OSError(errno.EMFILE, "Too many open files")

    server, client = trio.socket.socketpair()
    with client:
        await client.send(GET + GET)
        with trio.fail_after(5):
            await serve_connection(
                server,
                handler,
                ConnectionConfig(),
                Drain(),
                on_exhausted=lambda: exhausted.append(True),
            )
        raw = await _read_until_closed(client)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 1" in head and b"Connection: close" in head
    assert b"TOOMANYREQUESTS" in body
    # The connection is closed to give a descriptor back: the second request waits.
    assert raw.count(b"HTTP/1.1") == 1
    assert exhausted == [True]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_another_handler_failure_is_still_a_500() -> None:
    async def handler(request: Request) -> Response:
        raise OSError(errno.EIO, "I/O error")

    server, client = trio.socket.socketpair()
    with client:
        await client.send(GET)
        with trio.fail_after(5):
            await serve_connection(server, handler, ConnectionConfig(), Drain())
        raw = await _read_until_closed(client)
    assert raw.startswith(b"HTTP/1.1 500 ")
