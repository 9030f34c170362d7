"""The accept loop and admission on real sockets: limits, the lobby, probes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from mirror.server.admission import Limits
from mirror.server.listener import RegistryServer
from mirror.server.request import Request
from mirror.server.response import Response

Address = tuple[str, int]


async def _handler(request: Request) -> Response:
    return Response(200, [("Content-Type", "text/plain")], b"ok " + request.path.encode())


@asynccontextmanager
async def _server(limits: Limits) -> AsyncIterator[tuple[RegistryServer, Address]]:
    server = RegistryServer(_handler, limits=limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, "127.0.0.1", 0)
        yield server, server.addresses[0]
        nursery.cancel_scope.cancel()


async def _connect(address: Address, source: str) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(address)
    return sock


async def _get(address: Address, path: str, source: str = "127.0.0.1") -> bytes:
    """One request on its own connection; the whole answer (the server closes)."""
    with trio.fail_after(5):
        sock = await _connect(address, source)
        with sock:
            await sock.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            try:
                while chunk := await sock.recv(65536):
                    chunks.append(chunk)
            except ConnectionResetError:
                pass
            return b"".join(chunks)


async def _hold(
    stack: AsyncExitStack, server: RegistryServer, address: Address, sources: list[str]
) -> None:
    """One idle connection from each of `sources`, open until `stack` closes."""
    before = server.open_connections
    for source in sources:
        stack.enter_context(await _connect(address, source))
    await _until(lambda: server.open_connections >= before + len(sources))


async def _until(done: Callable[[], bool]) -> None:
    """Poll the server's counters (nothing signals them) for up to 10 s."""
    with trio.fail_after(10):
        while True:
            if done():
                return
            await trio.sleep(0.01)


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


async def test_one_client_at_its_limit_still_gets_probes_and_others_are_served() -> None:
    async with _server(Limits(connections=50, per_client=3)) as (server, address):
        async with AsyncExitStack() as stack:
            await _hold(stack, server, address, ["127.0.0.1"] * 3)
            for probe in ("/livez", "/readyz"):
                assert _status(await _get(address, probe)) == 200
            busy = await _get(address, "/v2/")
            assert _status(busy) == 503
            assert b"Retry-After: 1\r\n" in busy and b"Connection: close" in busy
            assert _status(await _get(address, "/v2/", source="127.0.0.2")) == 200
            assert server.refused["client"] == 1
        # Its connections closed, the client is served again.
        await _until(lambda: server.open_connections == 0)
        assert _status(await _get(address, "/v2/")) == 200


async def test_a_full_port_answers_probes_and_503_until_a_slot_frees() -> None:
    async with _server(Limits(connections=4, per_client=0)) as (server, address):
        async with AsyncExitStack() as stack:
            await _hold(stack, server, address, [f"127.0.0.{10 + i}" for i in range(4)])
            assert _status(await _get(address, "/readyz", source="127.0.0.20")) == 200
            assert _status(await _get(address, "/livez", source="127.0.0.20")) == 200
            assert _status(await _get(address, "/v2/", source="127.0.0.20")) == 503
            assert server.refused["capacity"] == 1
        await _until(lambda: server.open_connections == 0)
        assert _status(await _get(address, "/v2/", source="127.0.0.20")) == 200


async def test_a_probe_evicts_the_oldest_idle_connection_of_a_full_lobby() -> None:
    limits = Limits(connections=1, per_client=0, lobby=2, lobby_per_client=2)
    async with _server(limits) as (server, address), AsyncExitStack() as stack:
        await _hold(stack, server, address, ["127.0.0.30"])
        oldest = await _connect(address, "127.0.0.31")
        stack.enter_context(oldest)
        stack.enter_context(await _connect(address, "127.0.0.31"))
        await _until(lambda: server._admission.lobby == 2)
        # Both lobby places taken by connections that send nothing: the probe still
        # gets in, and the one that waited longest is closed for it.
        assert _status(await _get(address, "/readyz", source="127.0.0.32")) == 200
        with trio.fail_after(5):
            assert await oldest.recv(100) == b""
        assert server.refused["capacity"] == 1


async def test_a_bounded_flood_from_one_address_leaves_probes_and_others_served() -> None:
    async with _server(Limits(connections=64, per_client=16)) as (server, address):
        async with AsyncExitStack() as stack:
            flood = [await _connect(address, "127.0.0.40") for _ in range(400)]
            for sock in flood:
                stack.enter_context(sock)
            # 16 served, 8 waiting in the lobby, the others evicted from it.
            await _until(lambda: server.refused["client"] == 400 - 16 - 8)
            assert server.open_connections == 16
            assert _status(await _get(address, "/readyz", source="127.0.0.40")) == 200
            assert _status(await _get(address, "/v2/", source="127.0.0.41")) == 200
        await _until(lambda: server.open_connections == server._admission.lobby == 0)
