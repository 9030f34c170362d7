"""The WAN relay relays bytes unchanged, both ways, and counts what the upstream sent."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from bench.kit.wan import LinkSpec, WanRelay

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture
def echo_upstream() -> Iterator[tuple[str, int]]:
    """Reads a request up to a blank line, answers with its sha256 and then PAYLOAD."""
    server = socket.create_server(("127.0.0.1", 0))

    def handle(conn: socket.socket) -> None:
        with conn:
            request = b""
            while not request.endswith(b"\n\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            conn.sendall(hashlib.sha256(request).digest() + PAYLOAD)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()
    server.close()


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(1 << 20):
            received += chunk
    return received


def test_bytes_cross_unchanged_and_are_counted(echo_upstream: tuple[str, int]) -> None:
    request = os.urandom(200_000).replace(b"\n", b"x") + b"\n\n"
    with WanRelay(echo_upstream, LinkSpec(rate=500e6, rtt=0.002)) as relay:
        threads = []
        answers: list[bytes] = []
        for _ in range(3):
            thread = threading.Thread(target=lambda: answers.append(_exchange(relay.port, request)))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(30)
        counters = relay.counters()
    assert answers == [hashlib.sha256(request).digest() + PAYLOAD] * 3
    assert counters.down == 3 * (32 + len(PAYLOAD))
    assert counters.up == 3 * len(request)
    assert counters.connections == 3


def test_relay_refuses_non_loopback() -> None:
    with pytest.raises(ValueError):
        WanRelay(("10.0.0.1", 80), LinkSpec())
    with pytest.raises(ValueError):
        WanRelay(("127.0.0.1", 80), LinkSpec(), host="0.0.0.0")
