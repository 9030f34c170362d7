"""The requester's side of a cold start, over real loopback sockets: the claim decides
between the fast 404 and streaming from the claimant; bytes of a download in progress
are proven against the digest before the body ends. Only the DHT is a stand-in."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from pathlib import Path

import pytest
import trio

from dht import Provider
from dht.claims import Claim, ClaimAnswer, Lost, Refused, Won
from mirror.containerd.hosts import FALLBACK_HEADER
from mirror.ingest.serving import INFLIGHT_HEADER
from mirror.mirroring.coldmiss import ColdMissLimits
from mirror.mirroring.mirror import MirrorEvent, MirrorSettings, PeerMirror
from mirror.mirroring.movers import DigestMismatch
from mirror.mirroring.providers import ProviderCache
from mirror.oci.distribution import parse_distribution_path
from mirror.server.registry import FORWARDS_HEADER
from mirror.server.request import Request
from tests.mirroring.test_race import (
    BLOB,
    DIGEST,
    FixedProviders,
    _body_through,
    _fetch,
    _good_peer,
    _provider,
    _scripted_peer,
    _truncating_peer,
)


class ScriptedClaims:
    """Answers claims from a script, the last answer repeating."""

    def __init__(self, answers: list[ClaimAnswer]) -> None:
        self.answers = answers
        self.asked = 0
        self.asked_at: list[float] = []

    async def claim(self, key: str, lease: float) -> ClaimAnswer:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        self.asked_at.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        return answer


async def _cold_mirror(
    nursery: trio.Nursery,
    claims: ScriptedClaims,
    providers: list[Provider] | None = None,
    events: list[MirrorEvent] | None = None,
) -> PeerMirror:
    cache = ProviderCache(FixedProviders(providers or []), is_self=lambda p: False)
    await nursery.start(cache.run)
    settings = MirrorSettings(cold=ColdMissLimits(wait_budget=3.0, first_pause=0.05))
    return PeerMirror(
        cache, settings, claims=claims, on_event=None if events is None else events.append
    )


def _claim(holder: Provider) -> Claim:
    return Claim(b"k" * 16, holder, trio.current_time() + 5)


async def test_a_won_claim_is_the_fast_404_and_is_booked() -> None:
    me = _provider(1, b"me")
    async with trio.open_nursery() as nursery:
        claims = ScriptedClaims([Won(_claim(me))])
        events: list[MirrorEvent] = []
        mirror = await _cold_mirror(nursery, claims, events=events)
        assert await _fetch(mirror) is None
        assert mirror.book.holds(DIGEST, trio.current_time())
        assert [e.claim for e in events] == ["won"]
        assert await _fetch(mirror, "HEAD") is None  # a HEAD never claims
        assert claims.asked == 1
        nursery.cancel_scope.cancel()


async def test_a_refused_claim_falls_back_to_the_upstream() -> None:
    async with trio.open_nursery() as nursery:
        mirror = await _cold_mirror(nursery, ScriptedClaims([Refused("full")]))
        assert await _fetch(mirror) is None
        assert not mirror.book.holds(DIGEST, trio.current_time())
        nursery.cancel_scope.cancel()


async def test_a_lost_claim_streams_from_the_holder(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        holder = _provider(await _good_peer(nursery, tmp_path), b"holder")
        events: list[MirrorEvent] = []
        mirror = await _cold_mirror(nursery, ScriptedClaims([Lost(_claim(holder))]), events=events)
        response = await _fetch(mirror)
        assert response is not None and response.status == 200
        assert await _body_through(response) == BLOB
        assert events[-1].claim == "lost" and events[-1].outcome == "peer"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("claimed_another", "downloading", "searches_first"),
    [
        (False, None, False),
        (True, None, True),  # no view of the ingests: every claim held counts
        (True, ["sha256:" + "e" * 64], True),  # containerd is downloading the other claim
        (True, [], False),  # the other claim's download never began: it takes no downlink
    ],
)
async def test_a_node_fetching_a_claimed_blob_searches_before_claiming_another(
    claimed_another: bool, downloading: list[str] | None, searches_first: bool
) -> None:
    me = _provider(1, b"me")
    async with trio.open_nursery() as nursery:
        claims = ScriptedClaims([Won(_claim(me))])
        mirror = await _cold_mirror(nursery, claims)
        if downloading is not None:
            mirror.downloading = lambda: iter(downloading)
        if claimed_another:
            mirror.book.won("sha256:" + "e" * 64, trio.current_time())
        started = trio.current_time()
        assert await _fetch(mirror) is None  # no source anywhere: claimed all the same
        waited = claims.asked_at[0] - started
        nursery.cancel_scope.cancel()
    # first_pause is 0.05 s: a search comes first when another claim is being fetched.
    assert (waited >= 0.05) is searches_first


@pytest.mark.parametrize("passes_on", [False, True])
async def test_a_request_says_whether_this_node_passes_the_blob_on(passes_on: bool) -> None:
    requests: list[bytes] = []
    async with trio.open_nursery() as nursery:
        not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        peer = _provider(await _scripted_peer(nursery, not_found, b"", requests), b"peer")
        cache = ProviderCache(FixedProviders([peer]), is_self=lambda p: False)
        await nursery.start(cache.run)
        mirror = PeerMirror(cache, MirrorSettings(), forwards=lambda digest: passes_on)
        assert await _fetch(mirror) is None
        nursery.cancel_scope.cancel()
    assert requests
    assert all((FORWARDS_HEADER.encode() + b": 1" in r.lower()) is passes_on for r in requests)


async def _busy_then_good(
    nursery: trio.Nursery, root: Path, busy: int, *, reset: bool = False
) -> int:
    """A peer that answers 503 `busy` times, then proxies to a real good peer; with
    `reset`, each busy answer is followed at once by a reset of the connection."""
    good = await _good_peer(nursery, root)
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    answered = 0

    async def splice(a: trio.socket.SocketType, b: trio.socket.SocketType) -> None:
        while data := await a.recv(1 << 16):
            view = memoryview(data)
            while view:  # a send may take part of it
                view = view[await b.send(view) :]

    async def serve(sock: trio.socket.SocketType) -> None:
        nonlocal answered
        with sock:
            request = await sock.recv(65536)
            answered += 1
            if answered <= busy:
                answer = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"
                if reset:
                    # Both leave before the asker reads: the answer, then the reset.
                    os.write(sock.fileno(), answer)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                await sock.send(answer)
                return
            upstream = trio.socket.socket()
            with upstream:
                await upstream.connect(("127.0.0.1", good))
                await upstream.send(request)
                async with trio.open_nursery() as inner:
                    inner.start_soon(splice, upstream, sock)

    async def accept() -> None:
        with listener:
            while True:
                sock, _ = await listener.accept()
                nursery.start_soon(serve, sock)

    nursery.start_soon(accept)
    return int(listener.getsockname()[1])


async def test_a_busy_holder_is_waited_for_not_bypassed(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        holder = _provider(await _busy_then_good(nursery, tmp_path, busy=3), b"holder")
        claims = ScriptedClaims([Lost(_claim(holder))])
        mirror = await _cold_mirror(nursery, claims)
        response = await _fetch(mirror)
        assert response is not None and await _body_through(response) == BLOB
        assert claims.asked == 1  # busy means "wait", never "claim again"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("reset", [False, True])
async def test_a_resume_waits_for_a_busy_source(tmp_path: Path, reset: bool) -> None:
    """A stream ended to make room for a forwarding peer resumes where the other
    sources are busy for a while: waited for, not the body ended short; also when
    the busy source resets the connection right after its answer."""
    async with trio.open_nursery() as nursery:
        cutter = _provider(await _truncating_peer(nursery, cut_at=1_000_003), b"cut")
        busy = _provider(await _busy_then_good(nursery, tmp_path, busy=3, reset=reset), b"busy")
        cache = ProviderCache(FixedProviders([cutter, busy]), is_self=lambda p: False)
        await nursery.start(cache.run)
        settings = MirrorSettings(cold=ColdMissLimits(wait_budget=5.0, first_pause=0.05))
        mirror = PeerMirror(cache, settings)
        response = await _fetch(mirror)
        assert response is not None
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()


async def _inflight_peer(nursery: trio.Nursery, payload: bytes) -> int:
    """Serves `payload` as a download in progress of DIGEST (the header says so)."""
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n"
        f"Docker-Content-Digest: {DIGEST}\r\n"
        f"{INFLIGHT_HEADER}: 0/{len(payload)}\r\n\r\n"
    ).encode()
    return await _scripted_peer(nursery, head, payload)


@pytest.mark.parametrize("splice", [False, True])
async def test_wrong_bytes_from_a_download_in_progress_never_end_the_body(splice: bool) -> None:
    wrong = bytearray(BLOB)
    wrong[-1] ^= 0xFF  # the last byte only: everything before it is right
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        peer = _provider(await _inflight_peer(nursery, bytes(wrong)), b"liar")
        cache = ProviderCache(FixedProviders([peer]), is_self=lambda p: False)
        await nursery.start(cache.run)
        mirror = PeerMirror(cache, MirrorSettings(use_splice=splice), on_event=events.append)
        response = await _fetch(mirror)
        assert response is not None and response.status == 200
        with pytest.raises(ExceptionGroup) as failed:
            await _body_through(response)
        assert failed.group_contains(DigestMismatch)
        nursery.cancel_scope.cancel()
    assert events[-1].digest_mismatch and events[-1].outcome == "failed"
    assert events[-1].bytes < len(BLOB)  # the end was held back


async def test_right_bytes_from_a_download_in_progress_are_proven_and_sent() -> None:
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        peer = _provider(await _inflight_peer(nursery, BLOB), b"honest")
        cache = ProviderCache(FixedProviders([peer]), is_self=lambda p: False)
        await nursery.start(cache.run)
        mirror = PeerMirror(cache, MirrorSettings(use_splice=True), on_event=events.append)
        response = await _fetch(mirror)
        assert response is not None
        body = await _body_through(response)
        nursery.cancel_scope.cancel()
    assert hashlib.sha256(body).hexdigest() == DIGEST.removeprefix("sha256:")
    assert events[-1].inflight_source and not events[-1].digest_mismatch


async def test_a_fallback_request_is_never_held_for_a_download_in_progress(
    tmp_path: Path,
) -> None:
    """containerd asking this node as its second target (the node port service) may be
    the claimant's own containerd, sent here by its mirror's fast 404: holding it for
    the claimant's download would have that download wait on itself. Only complete
    holders serve it; nobody else: the fast 404, and no claim is made."""
    async with trio.open_nursery() as nursery:
        holder = _provider(await _good_peer(nursery, tmp_path), b"holder")
        downloading = Provider(
            node_id=b"d".ljust(16, b"\0"),
            host="127.0.0.1",
            udp_port=1,
            registry_port=holder.registry_port,
            progress=(len(BLOB) // 2, len(BLOB)),
        )
        claims = ScriptedClaims([Lost(_claim(holder))])
        events: list[MirrorEvent] = []
        mirror = await _cold_mirror(nursery, claims, [downloading], events)
        request = Request(
            "GET",
            f"/v2/team/app/blobs/{DIGEST}?ns=example.com",
            {FALLBACK_HEADER.lower(): "true"},
            True,
            False,
        )
        route = parse_distribution_path(request.path)
        assert route is not None
        with trio.fail_after(2):
            assert await mirror.fetch(request, route, "example.com") is None
        assert claims.asked == 0
        assert [(e.outcome, e.claim) for e in events] == [("miss", "")]
        # Its own containerd (no header) is held and streamed from the claim's holder.
        response = await _fetch(mirror)
        assert response is not None and await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()
