"""A peer that trickles a body (a few bytes at a time, never long enough apart to
trip the stall timeout of one read) is replaced through `Range` once it falls
below the rate floor; a slow client is never blamed on the peer; a download still
in progress is exempt (its pace is its upstream's). Real loopback sockets; only
the DHT is a stand-in."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio

from mirror.mirroring.mirror import MirrorEvent, MirrorSettings, PeerMirror
from mirror.mirroring.providers import ProviderCache
from mirror.mirroring.ratefloor import RateFloor
from mirror.oci.distribution import parse_distribution_path
from mirror.server.request import Request
from mirror.server.response import Response
from tests.mirroring.test_race import (
    BLOB,
    DIGEST,
    FixedProviders,
    _body_through,
    _good_peer,
    _provider,
)

# A window short enough for a test; the floor far above what the trickler sends.
FLOOR = {"min_rate": 256 * 1024, "rate_window": 0.4}


def test_the_floor_counts_only_time_spent_waiting() -> None:
    floor = RateFloor(min_rate=1000, window=1.0)
    floor.received(10)
    floor.waited(0.6)
    assert floor.met()
    assert floor.wait_limit(stall=10.0) == pytest.approx(0.4)
    floor.waited(0.5)
    assert not floor.met()


def test_a_window_that_met_its_quota_starts_the_next_from_nothing() -> None:
    floor = RateFloor(min_rate=1000, window=1.0)
    floor.received(50_000)  # a burst buys no credit for the next window
    floor.waited(1.0)
    assert floor.met()
    assert floor.wait_limit(stall=10.0) == pytest.approx(1.0)
    floor.received(999)
    floor.waited(1.0)
    assert not floor.met()


def test_no_floor_waits_the_whole_stall() -> None:
    floor = RateFloor(min_rate=0, window=1.0)
    floor.waited(100.0)
    assert floor.met()
    assert floor.wait_limit(stall=10.0) == 10.0


async def _trickling_peer(nursery: trio.Nursery, *, inflight: bool, gap: float) -> int:
    """Answers any GET for BLOB with its head, then 512 bytes every `gap` seconds (a
    range from its start; 206 with Content-Range when one is asked)."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    async def serve_one(sock: trio.socket.SocketType) -> None:
        with sock, contextlib.suppress(OSError):
            request = (await sock.recv(65536)).decode("latin-1")
            start, end = 0, len(BLOB) - 1
            status = "200 OK"
            extra = ""
            for line in request.split("\r\n"):
                if line.lower().startswith("range: bytes="):
                    first, _, last = line.split("=", 1)[1].partition("-")
                    start, end = int(first), int(last or end)
                    status = "206 Partial Content"
                    extra = f"Content-Range: bytes {start}-{end}/{len(BLOB)}\r\n"
            if inflight:
                extra += f"X-Mirror-Inflight: {len(BLOB)}/{len(BLOB)}\r\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Length: {end - start + 1}\r\n"
                f"Docker-Content-Digest: {DIGEST}\r\n{extra}\r\n"
            ).encode()
            await sock.send(head)
            position = start
            while position <= end:
                chunk = BLOB[position : min(position + 512, end + 1)]
                await sock.send(chunk)
                position += len(chunk)
                await trio.sleep(gap)

    async def serve() -> None:
        with listener:
            while True:
                sock, _ = await listener.accept()
                nursery.start_soon(serve_one, sock)

    nursery.start_soon(serve)
    return int(listener.getsockname()[1])


async def _mirror(
    nursery: trio.Nursery, ports: list[int], events: list[MirrorEvent], **settings: object
) -> PeerMirror:
    providers = [_provider(port, f"p{port}".encode()) for port in ports]
    cache = ProviderCache(FixedProviders(providers), is_self=lambda p: False)
    await nursery.start(cache.run)
    return PeerMirror(cache, MirrorSettings(**settings), on_event=events.append)  # type: ignore[arg-type]


async def _get(mirror: PeerMirror, headers: dict[str, str]) -> Response:
    request = Request("GET", f"/v2/team/app/blobs/{DIGEST}?ns=example.com", headers, True, False)
    route = parse_distribution_path(request.path)
    assert route is not None
    response = await mirror.fetch(request, route, "example.com")
    assert response is not None
    return response


@pytest.mark.parametrize(
    ("relay", "headers", "expected"),
    [
        ("copy", {}, BLOB),  # a whole blob: hashed on the way
        ("splice", {}, BLOB),
        ("splice", {"range": "bytes=1000-"}, BLOB[1000:]),  # a range: spliced
    ],
)
async def test_a_trickling_peer_is_replaced_through_range(
    tmp_path: Path, relay: str, headers: dict[str, str], expected: bytes
) -> None:
    events: list[MirrorEvent] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            trickler = await _trickling_peer(nursery, inflight=False, gap=0.02)
            good = await _good_peer(nursery, tmp_path)
            mirror = await _mirror(
                nursery, [trickler, good], events, use_splice=relay == "splice", **FLOOR
            )
            response = await _get(mirror, headers)
            assert dict(response.headers)["X-Mirror-Peer"] == f"127.0.0.1:{trickler}"
            assert await _body_through(response) == expected
            nursery.cancel_scope.cancel()
    assert [(event.outcome, event.resumes) for event in events] == [("peer", 1)]


async def test_a_slow_client_is_not_blamed_on_the_peer(tmp_path: Path) -> None:
    events: list[MirrorEvent] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            good = await _good_peer(nursery, tmp_path)
            mirror = await _mirror(nursery, [good], events, use_splice=True, **FLOOR)
            response = await _get(mirror, {})
            client, server_side = trio.socket.socketpair()
            client.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 64 * 1024)
            received = bytearray()

            async def read_slowly() -> None:
                # Well under the floor's rate, for several of its windows.
                while len(received) < len(BLOB):
                    chunk = await client.recv(64 * 1024)
                    if not chunk:
                        return
                    received.extend(chunk)
                    if len(received) < 512 * 1024:
                        await trio.sleep(0.4)  # 160 KiB/s

            async with trio.open_nursery() as inner:
                inner.start_soon(read_slowly)
                assert not isinstance(response.body, bytes)
                await response.body.send(server_side, 5.0)
            response.release()
            client.close()
            server_side.close()
            assert bytes(received) == BLOB
            nursery.cancel_scope.cancel()
    assert [(event.outcome, event.resumes) for event in events] == [("peer", 0)]


async def test_a_download_in_progress_is_not_held_to_the_floor(tmp_path: Path) -> None:
    events: list[MirrorEvent] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            # 5 MiB in 512-byte steps with no pause: slower than the floor only
            # because of the gaps below.
            slow = await _trickling_peer(nursery, inflight=True, gap=0.0)
            good = await _good_peer(nursery, tmp_path)
            mirror = await _mirror(
                nursery,
                [slow, good],
                events,
                use_splice=True,
                min_rate=1 << 40,  # nobody could meet it
                rate_window=0.05,
            )
            response = await _get(mirror, {})
            assert dict(response.headers)["X-Mirror-Peer"] == f"127.0.0.1:{slow}"
            assert await _body_through(response) == BLOB
            nursery.cancel_scope.cancel()
    assert [(event.outcome, event.resumes) for event in events] == [("peer", 0)]
