"""The kit's shaping relay: a client that resets mid-transfer must not take the relay down."""

from __future__ import annotations

import socket
import struct
import threading

from bench.kit.wan import LinkSpec, WanRelay

PAYLOAD = b"x" * (4 * 1024 * 1024)


def _data_server() -> tuple[socket.socket, int]:
    """Sends PAYLOAD to every connection (one thread each), ignoring broken clients."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(64)
                conn.sendall(PAYLOAD)
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server, int(server.getsockname()[1])


def _fetch(relay: WanRelay, *, reset_after: int | None = None) -> int:
    with socket.create_connection((relay.host, relay.port), timeout=10) as client:
        client.sendall(b"go")
        received = 0
        while received < len(PAYLOAD):
            chunk = client.recv(65536)
            if not chunk:
                break
            received += len(chunk)
            if reset_after is not None and received >= reset_after:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                break
        return received


def test_a_client_reset_mid_transfer_leaves_the_relay_serving() -> None:
    server, port = _data_server()
    relay = WanRelay(("127.0.0.1", port), LinkSpec(rate=50e6, rtt=0.002))
    relay.start()
    try:
        for _ in range(3):
            _fetch(relay, reset_after=256 * 1024)
        assert _fetch(relay) == len(PAYLOAD)
    finally:
        relay.stop()
        server.close()
