"""Striping a huge blob over several holders, in one process over real loopback sockets.

Good holders are the real hot path (RegistryServer + RegistryHandler) over
content-store directories; bad ones are scripted servers that answer `Range`
requests on a kept-alive connection and then misbehave: die mid-range, send wrong
bytes, answer another range, or say busy. The client side is a real connection
too where it matters (a reset is only visible on a socket). Only the DHT is a
stand-in. Blobs and pieces are small so that a body takes many ranges.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from mirror.mirroring.mirror import MirrorEvent, MirrorSettings, PeerMirror
from mirror.mirroring.movers import DigestMismatch
from mirror.mirroring.providers import ProviderCache
from mirror.mirroring.relay import RelayBody
from mirror.mirroring.striper import StripedBody, StripeSettings
from mirror.server.listener import RegistryServer
from mirror.server.localstore import LocalStore
from mirror.server.registry import RegistryHandler
from tests.mirroring.test_race import (
    BLOB,
    DIGEST,
    FixedProviders,
    NoTags,
    _body_through,
    _fetch,
    _good_peer,
    _provider,
)

PIECE = 64 * 1024
# Everything over 1 MiB is striped, 3 holders at once, 64 KiB a range: BLOB takes 81.
STRIPE = StripeSettings(width=3, threshold=1024 * 1024, piece=PIECE, depth=2)
# The stand-in DHT answers at once, but a loaded machine can hold the loop past the
# 20 ms default before the lookup task runs: the race would end as a miss (it did in CI).
RESOLVE_TIMEOUT = 1.0
_RESET = struct.pack("ii", 1, 0)


@dataclass
class RangePeer:
    """A holder of BLOB that answers `Range` on a kept-alive connection, until its
    fault: after `die_after` body bytes it resets the connection; `wrong` flips a byte
    of every range; `shift` answers another range than asked; `busy` says 503;
    `trickle` sends slowly."""

    die_after: int | None = None
    wrong: bool = False
    shift: int = 0
    busy: bool = False
    trickle: bool = False  # 1 KiB every 10 ms: 100 KB/s, far behind the others
    asked: list[tuple[int, int]] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    sent: int = 0
    port: int = 0

    async def start(self, nursery: trio.Nursery) -> int:
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.port = int(listener.getsockname()[1])

        async def accept() -> None:
            with listener:
                while True:
                    sock, _ = await listener.accept()
                    nursery.start_soon(self._serve, sock)

        nursery.start_soon(accept)
        return self.port

    async def _serve(self, sock: trio.socket.SocketType) -> None:
        with sock, contextlib.suppress(OSError):
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = await sock.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                if not await self._answer(sock, head.decode("latin-1")):
                    return

    async def _answer(self, sock: trio.socket.SocketType, head: str) -> bool:
        self.heads.append(head)
        ranges = [line for line in head.split("\r\n") if line.lower().startswith("range:")]
        if not ranges:
            start, end = 0, len(BLOB)
            status = "200 OK"
        else:
            first, last = ranges[0].split("=", 1)[1].split("-")
            start, end = int(first), int(last) + 1
            status = "206 Partial Content"
            self.asked.append((start, end))
        if self.busy and ranges:
            await sock.send(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
            return True
        body = bytearray(BLOB[start + self.shift : end + self.shift])
        if self.wrong:
            body[len(body) // 2] ^= 0xFF
        reply = (
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Range: bytes {start + self.shift}-{end + self.shift - 1}/{len(BLOB)}\r\n"
            f"Docker-Content-Digest: {DIGEST}\r\n\r\n"
        ).encode()
        head = memoryview(reply)
        while head:  # after a pipelined body, a send may take part of it
            head = head[await sock.send(head) :]
        view = memoryview(body)
        while view:
            if self.die_after is not None and self.sent >= self.die_after:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                return False
            if self.trickle:
                await trio.sleep(0.01)
            count = await sock.send(view[: min(1024 if self.trickle else 16384, len(view))])
            self.sent += count
            view = view[count:]
        return True


async def _mirror(
    nursery: trio.Nursery,
    ports: list[int],
    events: list[MirrorEvent] | None = None,
    aborted: list[str] | None = None,
    **settings: object,
) -> PeerMirror:
    providers = [_provider(port, f"p{port}".encode()) for port in ports]
    cache = ProviderCache(FixedProviders(providers), is_self=lambda p: False)
    await nursery.start(cache.run)

    async def abort(digest: str) -> None:
        if aborted is not None:
            aborted.append(digest)

    return PeerMirror(
        cache,
        MirrorSettings(stripe=STRIPE, resolve_timeout=RESOLVE_TIMEOUT, **settings),  # type: ignore[arg-type]
        on_event=None if events is None else events.append,
        abort_ingest=abort,
    )


async def _good_peers(nursery: trio.Nursery, root: Path, count: int) -> list[int]:
    return [await _good_peer(nursery, root / f"holder-{i}") for i in range(count)]


async def test_a_huge_blob_comes_from_several_holders_at_once(tmp_path: Path) -> None:
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        first = await _good_peer(nursery, tmp_path / "first")
        others = [RangePeer(), RangePeer()]
        ports = [first] + [await peer.start(nursery) for peer in others]
        mirror = await _mirror(nursery, ports, events)
        response = await _fetch(mirror)
        assert response is not None and response.status == 200
        assert isinstance(response.body, StripedBody)
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()
    # Each of the others was asked for disjoint ranges of the blob, none whole.
    asked = [r for peer in others for r in peer.asked]
    assert len(others[0].asked) >= 10 and len(others[1].asked) >= 10
    assert len(set(asked)) == len(asked)
    assert all(end - start <= PIECE for start, end in asked)
    assert [(e.outcome, e.striped, e.bytes) for e in events] == [("peer", 3, len(BLOB))]
    # Every range request carries the loop guard: a holder serves its own content only.
    heads = [head.lower() for peer in others for head in peer.heads]
    assert heads and all("\r\nx-spegel-mirrored: true\r\n" in head for head in heads)
    # The holders after the first are asked for their spare uplink only (registry.py).
    assert all("\r\nx-mirror-stripe: spare\r\n" in head for head in heads)


async def test_range_requests_carry_the_clusters_credentials(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        first = await _good_peer(nursery, tmp_path / "first")
        other = RangePeer()
        ports = [first, await other.start(nursery)]
        providers = [_provider(port, f"p{port}".encode()) for port in ports]
        cache = ProviderCache(FixedProviders(providers), is_self=lambda p: False)
        await nursery.start(cache.run)
        mirror = PeerMirror(
            cache,
            MirrorSettings(stripe=STRIPE, resolve_timeout=RESOLVE_TIMEOUT),
            authorization="Basic Zm9vOmJhcg==",
        )
        response = await _fetch(mirror)
        assert response is not None and isinstance(response.body, StripedBody)
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()
    assert other.heads
    assert all("\r\nAuthorization: Basic Zm9vOmJhcg==" in head for head in other.heads)


async def test_with_one_holder_the_blob_is_relayed_whole(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        mirror = await _mirror(nursery, [await _good_peer(nursery, tmp_path)])
        response = await _fetch(mirror)
        assert response is not None and isinstance(response.body, RelayBody)
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()


async def test_below_the_threshold_the_blob_is_relayed_whole(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        ports = await _good_peers(nursery, tmp_path, 2)
        mirror = await _mirror(nursery, ports)
        mirror.settings = MirrorSettings(
            stripe=StripeSettings(threshold=len(BLOB) + 1), resolve_timeout=RESOLVE_TIMEOUT
        )
        response = await _fetch(mirror)
        assert response is not None and isinstance(response.body, RelayBody)
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()


async def test_a_holder_dying_mid_range_is_replaced(tmp_path: Path) -> None:
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        good = await _good_peers(nursery, tmp_path, 2)
        dying = RangePeer(die_after=PIECE * 3 + 1000)  # mid-way through its fourth range
        ports = [good[0], await dying.start(nursery), good[1]]
        mirror = await _mirror(nursery, ports, events)
        response = await _fetch(mirror)
        assert response is not None
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()
    assert len(dying.asked) >= 4  # it did take part, and died in a range
    [event] = events
    assert event.outcome == "peer" and event.bytes == len(BLOB)
    assert event.resumes >= 1  # what it still owed went to the others


async def test_a_holder_answering_another_range_is_dropped(tmp_path: Path) -> None:
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        good = await _good_peers(nursery, tmp_path, 2)
        liar = RangePeer(shift=PIECE)
        ports = [good[0], await liar.start(nursery), good[1]]
        mirror = await _mirror(nursery, ports, events)
        response = await _fetch(mirror)
        assert response is not None
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()
    assert len(liar.asked) == 1 or len(liar.asked) == 2  # its pipelined second, at most
    assert events[0].outcome == "peer" and events[0].striped == 2


def _drops(caplog: pytest.LogCaptureFixture, port: int) -> list[str]:
    """Why the holder on `port` was dropped from a striped fetch."""
    return [
        record.reason  # type: ignore[attr-defined]
        for record in caplog.records
        if record.getMessage() == "striped fetch dropped a holder"
        and record.peer == f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    ]


async def test_a_trickling_holder_is_let_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="mirror.mirroring")
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        good = await _good_peers(nursery, tmp_path, 2)
        slow = RangePeer(trickle=True)
        ports = [good[0], await slow.start(nursery), good[1]]
        mirror = await _mirror(nursery, ports, events)
        response = await _fetch(mirror)
        assert response is not None
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()
    # It held the window back while the others stood idle: its ranges went to them.
    assert _drops(caplog, slow.port) == ["slower than an idle holder"]
    assert events[0].outcome == "peer" and events[0].resumes >= 1


async def test_a_busy_holder_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mirror.mirroring")
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        good = await _good_peers(nursery, tmp_path, 2)
        busy = RangePeer(busy=True)
        ports = [good[0], await busy.start(nursery), good[1]]
        mirror = await _mirror(nursery, ports, events)
        response = await _fetch(mirror)
        assert response is not None
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()
    assert 1 <= len(busy.asked) <= 2
    assert _drops(caplog, busy.port) == ["busy"]
    assert events[0].outcome == "peer" and events[0].striped == 2


async def test_every_holder_dying_ends_the_body_short_not_wrong(tmp_path: Path) -> None:
    """containerd comes back at its offset after an unexpected EOF (a reset would fail
    its pull): the body ends short, after every byte the holders did send."""
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        first = RangePeer(die_after=PIECE * 2 + 10)
        second = RangePeer(die_after=PIECE * 5 + 10)
        ports = [await first.start(nursery), await second.start(nursery)]
        mirror = await _mirror(nursery, ports, events)
        front = await _front(nursery, mirror)
        status, body, reset = await _get_through(front)
        nursery.cancel_scope.cancel()
    assert status == 200 and not reset
    assert 0 < len(body) < len(BLOB) and BLOB.startswith(body)
    assert events[0].outcome == "failed" and not events[0].digest_mismatch


async def test_wrong_bytes_reset_the_client_and_the_blob_is_not_striped_again(
    tmp_path: Path,
) -> None:
    events: list[MirrorEvent] = []
    aborted: list[str] = []
    async with trio.open_nursery() as nursery:
        good = await _good_peers(nursery, tmp_path, 2)
        liar = RangePeer(wrong=True)
        ports = [good[0], await liar.start(nursery), good[1]]
        mirror = await _mirror(nursery, ports, events, aborted)
        front = await _front(nursery, mirror)
        status, body, reset = await _get_through(front)
        # The client never saw a clean end: a reset, short of the last chunk.
        assert status == 200 and reset and len(body) < len(BLOB)
        assert aborted == [DIGEST]  # the local download it fed is dropped first
        # Which holder lied is unknown: the next pull is relayed from one holder, whose
        # bytes are proven on their own.
        response = await _fetch(mirror)
        assert response is not None and isinstance(response.body, RelayBody)
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()
    assert len(liar.asked) >= 10
    assert [(e.outcome, e.digest_mismatch) for e in events] == [
        ("failed", True),
        ("peer", False),
    ]


async def test_the_body_raises_the_mismatch_itself(tmp_path: Path) -> None:
    """The connection resets only on a bare DigestMismatch (an ExceptionGroup would
    look like any other failure and end the body cleanly short)."""
    async with trio.open_nursery() as nursery:
        good = await _good_peer(nursery, tmp_path)
        liar = RangePeer(wrong=True)
        mirror = await _mirror(nursery, [good, await liar.start(nursery)])
        response = await _fetch(mirror)
        assert response is not None and isinstance(response.body, StripedBody)
        client, server_side = trio.socket.socketpair()
        with client, server_side:
            async with trio.open_nursery() as reader:
                reader.start_soon(_drain, client)
                with pytest.raises(DigestMismatch):
                    await response.body.send(server_side, 5.0)
                reader.cancel_scope.cancel()
        response.release()
        nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_holds_no_more_than_the_window(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        good = await _good_peer(nursery, tmp_path)
        holders = [RangePeer(), RangePeer()]
        ports = [good] + [await peer.start(nursery) for peer in holders]
        mirror = await _mirror(nursery, ports)
        response = await _fetch(mirror)
        assert response is not None
        client, server_side = trio.socket.socketpair()
        for sock in (client, server_side):  # the client's socket holds little
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with client, server_side:
            async with trio.open_nursery() as sending:
                sending.start_soon(response.body.send, server_side, 30.0)  # type: ignore[union-attr]
                await trio.sleep(0.5)  # the client reads nothing
                asked = sum(end - start for p in holders for start, end in p.asked)
                sending.cancel_scope.cancel()
        response.release()
        nursery.cancel_scope.cancel()
    # What the holders were asked for fits in the window, whatever the client does
    # (the good holder's share is no larger than theirs).
    assert 0 < asked <= STRIPE.width * STRIPE.depth * PIECE


async def _drain(sock: trio.socket.SocketType) -> None:
    with contextlib.suppress(OSError):
        while await sock.recv(1 << 20):
            pass


async def _front(nursery: trio.Nursery, mirror: PeerMirror) -> int:
    """This node's registry port, with nothing local: every blob is a miss to `mirror`."""
    root = Path(__file__).parent / "empty-content-store"
    handler = RegistryHandler(LocalStore(root, NoTags()), miss=mirror)
    server = RegistryServer(handler)
    await nursery.start(server.run, "127.0.0.1", 0)
    return int(server.addresses[0][1])


async def _get_through(port: int) -> tuple[int, bytes, bool]:
    """GET the blob as containerd would: (status, body bytes, whether it ended in a reset)."""
    sock = trio.socket.socket()
    with sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(
            f"GET /v2/team/app/blobs/{DIGEST}?ns=example.com HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        data = b""
        reset = False
        with trio.fail_after(30):
            try:
                while chunk := await sock.recv(1 << 20):
                    data += chunk
                    if len(data) >= len(BLOB) + 4096:
                        break
            except ConnectionResetError:
                reset = True
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status == 200:
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        assert length == len(BLOB)
    assert hashlib.sha256(BLOB).hexdigest() in DIGEST
    return status, body, reset


async def test_in_redirect_mode_a_huge_blob_with_two_holders_is_striped(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        ports = await _good_peers(nursery, tmp_path, 2)
        mirror = await _mirror(nursery, ports, redirect=True)
        response = await _fetch(mirror)
        assert response is not None and response.status == 200
        assert isinstance(response.body, StripedBody)
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()


async def test_in_redirect_mode_a_huge_blob_with_one_holder_is_redirected(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        port = await _good_peer(nursery, tmp_path)
        mirror = await _mirror(nursery, [port], redirect=True)
        response = await _fetch(mirror)
        assert response is not None and response.status == 307
        location = dict(response.headers)["Location"]
        assert location.startswith(f"http://127.0.0.1:{port}/v2/team/app/blobs/{DIGEST}")
        response.release()
        nursery.cancel_scope.cancel()
