"""What the peer mirror tells about each peer: bytes it got from it, and why a request failed.

Peers on their own loopback addresses (127.0.0.N), so each one is its own host: the
real hot path for the good one, sockets that refuse, stall, cut a body short or
answer busy for the others.
"""

from __future__ import annotations

import contextlib
import socket
from collections import Counter
from pathlib import Path

import trio

from dht import Provider
from mirror.mirroring.mirror import MirrorSettings, PeerMirror
from mirror.mirroring.providers import ProviderCache
from mirror.server.listener import RegistryServer
from mirror.server.localstore import LocalStore
from mirror.server.registry import RegistryHandler
from tests.mirroring.test_race import (
    BLOB,
    DIGEST,
    FixedProviders,
    NoTags,
    _body_through,
    _content_store,
    _fetch,
)

GOOD, DEAD, CUT, STALLED, BUSY = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"


class Ledger:
    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.failures: list[tuple[str, str]] = []

    def peer_received(self, host: str, count: int) -> None:
        self.received[host] += count

    def peer_failed(self, host: str, reason: str) -> None:
        self.failures.append((host, reason))


def _provider(host: str, port: int) -> Provider:
    return Provider(
        node_id=host.encode().ljust(16, b"\0"), host=host, udp_port=1, registry_port=port
    )


async def _good_peer(nursery: trio.Nursery, root: Path) -> int:
    server = RegistryServer(RegistryHandler(LocalStore(_content_store(root), NoTags())))
    await nursery.start(server.run, GOOD, 0)
    return int(server.addresses[0][1])


def _dead_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def _listener(host: str) -> trio.socket.SocketType:
    listener = trio.socket.socket()
    await listener.bind((host, 0))
    listener.listen(16)
    return listener


async def _scripted_peer(nursery: trio.Nursery, host: str, answer: bytes) -> int:
    """Answers every request with `answer`, then closes (a reset if the client left)."""
    listener = await _listener(host)

    async def serve() -> None:
        with listener:
            while True:
                sock, _ = await listener.accept()
                with sock, contextlib.suppress(OSError):
                    await sock.recv(65536)
                    view = memoryview(answer)
                    while view:
                        view = view[await sock.send(view[: 1 << 16]) :]

    nursery.start_soon(serve)
    return int(listener.getsockname()[1])


async def _stalling_peer(nursery: trio.Nursery, host: str) -> int:
    listener = await _listener(host)

    async def hold() -> None:
        held = []
        with listener:
            while True:
                sock, _ = await listener.accept()
                held.append(sock)  # accepted, never answered

    nursery.start_soon(hold)
    return int(listener.getsockname()[1])


async def _mirror(nursery: trio.Nursery, providers: list[Provider], ledger: Ledger) -> PeerMirror:
    cache = ProviderCache(FixedProviders(providers), is_self=lambda p: False)
    await nursery.start(cache.run)
    return PeerMirror(cache, MirrorSettings(head_timeout=0.5), ledger=ledger)


async def test_a_gone_peer_is_unreachable_and_the_bytes_count_for_the_one_that_served(
    tmp_path: Path,
) -> None:
    ledger = Ledger()
    async with trio.open_nursery() as nursery:
        good = await _good_peer(nursery, tmp_path)
        providers = [_provider(DEAD, _dead_port(DEAD)), _provider(GOOD, good)]
        response = await _fetch(await _mirror(nursery, providers, ledger))
        assert response is not None
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()
    assert ledger.failures == [(DEAD, "unreachable")]
    assert ledger.received == {GOOD: len(BLOB)}


async def test_a_body_cut_short_is_the_peers_failure_and_each_source_gets_its_bytes(
    tmp_path: Path,
) -> None:
    ledger = Ledger()
    cut_at = 1024 * 1024
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(BLOB)}\r\nDocker-Content-Digest: {DIGEST}\r\n\r\n"
    ).encode()
    async with trio.open_nursery() as nursery:
        cut = await _scripted_peer(nursery, CUT, head + BLOB[:cut_at])
        good = await _good_peer(nursery, tmp_path)
        providers = [_provider(CUT, cut), _provider(GOOD, good)]
        response = await _fetch(await _mirror(nursery, providers, ledger))
        assert response is not None
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()
    assert ledger.failures == [(CUT, "body")]
    assert ledger.received == {CUT: cut_at, GOOD: len(BLOB) - cut_at}


async def test_no_head_in_time_is_a_timeout_and_a_busy_answer_no_failure() -> None:
    ledger = Ledger()
    busy_answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"
    async with trio.open_nursery() as nursery:
        stalled = await _stalling_peer(nursery, STALLED)
        busy = await _scripted_peer(nursery, BUSY, busy_answer)
        providers = [_provider(BUSY, busy), _provider(STALLED, stalled)]
        assert await _fetch(await _mirror(nursery, providers, ledger)) is None
        nursery.cancel_scope.cancel()
    assert ledger.failures == [(STALLED, "timeout")]
    assert not ledger.received
