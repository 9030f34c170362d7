"""Real TCP connections on 127.0.0.1 for tests of code that moves bytes between sockets."""

from __future__ import annotations

import trio


async def tcp_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """Both ends of one loopback TCP connection: (the connecting side, the accepted side)."""
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        near = trio.socket.socket()
        await near.connect(listener.getsockname())
        far, _ = await listener.accept()
    return near, far
