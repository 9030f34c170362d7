"""sendfile on a real TCP connection: the socket is corked while a body goes out (full
segments only, as nginx's tcp_nopush) and uncorked at its end, so the last partial
segment leaves at once instead of after the kernel's 200 ms cork timer."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import trio

from mirror.server.io import send_file
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
