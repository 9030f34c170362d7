"""The mirroring race and relay, in one process over real loopback sockets.

The "good" peer is the real hot path (RegistryServer + RegistryHandler) over a
content-store directory; the bad ones are sockets that refuse, stall, or cut a
body short. Only the provider list is a stand-in for the DHT.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from dht import Provider
from mirror.mirroring.mirror import MirrorEvent, MirrorSettings, PeerMirror
from mirror.mirroring.peer import request_head
from mirror.mirroring.providers import ProviderCache
from mirror.oci.distribution import parse_distribution_path
from mirror.server.listener import RegistryServer
from mirror.server.localstore import LocalStore
from mirror.server.registry import RegistryHandler
from mirror.server.request import Request
from mirror.server.response import Response
from tests.httpclient import Reply, byteranges

BLOB = os.urandom(5 * 1024 * 1024 + 17)  # past SMALL_BLOB_SIZE: relayed, not held
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class NoTags:
    async def resolve(self, image_name: str) -> None:
        return None


class FixedProviders:
    def __init__(self, providers: list[Provider]) -> None:
        self.providers = providers

    async def get_providers(self, key: str, limit: int = 20) -> AsyncIterator[Provider]:
        for provider in self.providers:
            yield provider


def _provider(port: int, name: bytes) -> Provider:
    return Provider(node_id=name.ljust(16, b"\0"), host="127.0.0.1", udp_port=1, registry_port=port)


def _content_store(root: Path) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / DIGEST.removeprefix("sha256:")).write_bytes(BLOB)
    return root


async def _good_peer(nursery: trio.Nursery, root: Path) -> int:
    server = RegistryServer(RegistryHandler(LocalStore(_content_store(root), NoTags())))
    await nursery.start(server.run, "127.0.0.1", 0)
    return int(server.addresses[0][1])


async def _stalling_peer(nursery: trio.Nursery) -> int:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    async def hold() -> None:
        held = []
        with listener:
            while True:
                sock, _ = await listener.accept()
                held.append(sock)  # accepted, never answered

    nursery.start_soon(hold)
    return int(listener.getsockname()[1])


async def _scripted_peer(
    nursery: trio.Nursery, head: bytes, body: bytes, requests: list[bytes] | None = None
) -> int:
    """Answers every request with `head` then `body`, and closes (a reset if cut short);
    each request's head is kept in `requests`, if given."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    async def serve() -> None:
        with listener:
            while True:
                sock, _ = await listener.accept()
                with sock, contextlib.suppress(OSError):  # the client may leave first
                    request = await sock.recv(65536)
                    if requests is not None:
                        requests.append(request)
                    view = memoryview(head + body)
                    while view:
                        view = view[await sock.send(view[: 1 << 16]) :]

    nursery.start_soon(serve)
    return int(listener.getsockname()[1])


async def _truncating_peer(nursery: trio.Nursery, cut_at: int) -> int:
    """Answers with the real head, then sends `cut_at` body bytes and resets."""
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(BLOB)}\r\nDocker-Content-Digest: {DIGEST}\r\n\r\n"
    ).encode()
    return await _scripted_peer(nursery, head, BLOB[:cut_at])


def _dead_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _fetch(mirror: PeerMirror, method: str = "GET") -> Response | None:
    target = f"/v2/team/app/blobs/{DIGEST}?ns=example.com"
    request = Request(method, target, {}, True, False)
    route = parse_distribution_path(request.path)
    assert route is not None
    return await mirror.fetch(request, route, "example.com")


async def _body_through(response: Response) -> bytes:
    client, server_side = trio.socket.socketpair()
    received = bytearray()

    async def read_all() -> None:
        while len(received) < response.length:
            chunk = await client.recv(1 << 20)
            if not chunk:
                return
            received.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        assert not isinstance(response.body, bytes)
        await response.body.send(server_side, 5.0)
    response.release()
    client.close()
    server_side.close()
    return bytes(received)


async def _mirror(
    nursery: trio.Nursery, providers: list[Provider], **settings: float
) -> PeerMirror:
    cache = ProviderCache(FixedProviders(providers), is_self=lambda p: False)
    await nursery.start(cache.run)
    # The stand-in DHT answers at once; a loaded machine must not turn that into a miss
    # by holding the loop past the 20 ms default before the lookup task runs.
    settings.setdefault("resolve_timeout", 1.0)
    return PeerMirror(cache, MirrorSettings(**settings))  # type: ignore[arg-type]


async def test_a_dead_peer_is_skipped(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        good = await _good_peer(nursery, tmp_path)
        mirror = await _mirror(
            nursery, [_provider(_dead_port(), b"dead"), _provider(good, b"good")]
        )
        response = await _fetch(mirror)
        assert response is not None and response.status == 200
        assert dict(response.headers)["X-Mirror-Peer"] == f"127.0.0.1:{good}"
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()


async def test_a_stalled_peer_is_hedged(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        stall = await _stalling_peer(nursery)
        good = await _good_peer(nursery, tmp_path)
        mirror = await _mirror(nursery, [_provider(stall, b"stall"), _provider(good, b"good")])
        started = trio.current_time()
        response = await _fetch(mirror, "HEAD")
        elapsed = trio.current_time() - started
        assert response is not None and response.length == len(BLOB)
        assert dict(response.headers)["X-Mirror-Peer"] == f"127.0.0.1:{good}"
        # The hedge (100 ms before any latency is known) started the good peer
        # long before the stalled one's head timeout (5 s).
        assert elapsed < 1.0
        nursery.cancel_scope.cancel()


async def test_no_provider_is_a_fast_miss() -> None:
    async with trio.open_nursery() as nursery:
        mirror = await _mirror(nursery, [])
        started = trio.current_time()
        assert await _fetch(mirror) is None
        assert trio.current_time() - started < 0.5
        nursery.cancel_scope.cancel()


async def test_only_stalled_peers_end_at_the_head_timeout() -> None:
    async with trio.open_nursery() as nursery:
        stall = await _stalling_peer(nursery)
        mirror = await _mirror(nursery, [_provider(stall, b"stall")], head_timeout=0.3)
        started = trio.current_time()
        assert await _fetch(mirror) is None
        assert 0.25 < trio.current_time() - started < 2.0
        nursery.cancel_scope.cancel()


async def test_retries_bound_the_attempts(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        good = await _good_peer(nursery, tmp_path)
        gone = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        wrong = [_provider(await _scripted_peer(nursery, gone, b""), bytes([i])) for i in range(3)]
        mirror = await _mirror(nursery, [*wrong, _provider(good, b"good")], resolve_retries=3)
        assert await _fetch(mirror) is None
        mirror = await _mirror(nursery, [*wrong, _provider(good, b"good")], resolve_retries=4)
        response = await _fetch(mirror)
        assert response is not None
        response.release()
        nursery.cancel_scope.cancel()


async def test_a_body_cut_short_is_resumed_from_another_peer(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        cutter = await _truncating_peer(nursery, cut_at=1_000_003)
        good = await _good_peer(nursery, tmp_path)
        mirror = await _mirror(nursery, [_provider(cutter, b"cut"), _provider(good, b"good")])
        response = await _fetch(mirror)
        assert response is not None
        assert dict(response.headers)["X-Mirror-Peer"] == f"127.0.0.1:{cutter}"
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()


async def test_splice_relay_resumes_too(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        cutter = await _truncating_peer(nursery, cut_at=2_000_000)
        good = await _good_peer(nursery, tmp_path)
        providers = [_provider(cutter, b"cut"), _provider(good, b"good")]
        cache = ProviderCache(FixedProviders(providers), is_self=lambda p: False)
        await nursery.start(cache.run)
        mirror = PeerMirror(cache, MirrorSettings(use_splice=True))
        response = await _fetch(mirror)
        assert response is not None
        assert await _body_through(response) == BLOB
        nursery.cancel_scope.cancel()


class ProvidersByKey:
    def __init__(self, table: dict[str, list[Provider]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def get_providers(self, key: str, limit: int = 20) -> AsyncIterator[Provider]:
        self.asked.append(key)
        for provider in self.table.get(key, []):
            yield provider


async def test_the_manifest_peer_is_hinted_for_what_it_names(tmp_path: Path) -> None:
    import json

    root = _content_store(tmp_path)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": DIGEST,
                "size": 1,
            },
            "layers": [],
        }
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    (root / "blobs" / "sha256" / manifest_digest.removeprefix("sha256:")).write_bytes(manifest)
    async with trio.open_nursery() as nursery:
        server = RegistryServer(RegistryHandler(LocalStore(root, NoTags())))
        await nursery.start(server.run, "127.0.0.1", 0)
        good = _provider(server.addresses[0][1], b"good")
        # The DHT knows the manifest's provider but (not yet) the blob's.
        source = ProvidersByKey({manifest_digest: [good]})
        cache = ProviderCache(source, is_self=lambda p: False)
        await nursery.start(cache.run)
        mirror = PeerMirror(cache, MirrorSettings())
        request = Request("GET", f"/v2/team/app/manifests/{manifest_digest}", {}, True, False)
        route = parse_distribution_path(request.path)
        assert route is not None
        response = await mirror.fetch(request, route, "example.com")
        assert response is not None and response.body == manifest
        blob = await _fetch(mirror)
        assert blob is not None and await _body_through(blob) == BLOB
        assert cache.hints == 1
        # Without the hint the same DHT answer is a miss.
        bare = PeerMirror(ProviderCache(source, is_self=lambda p: False), MirrorSettings())
        await nursery.start(bare.cache.run)
        assert await _fetch(bare) is None
        nursery.cancel_scope.cancel()


async def _fetch_path(mirror: PeerMirror, method: str, path: str) -> Response | None:
    request = Request(method, path, {}, True, False)
    route = parse_distribution_path(request.path)
    assert route is not None
    return await mirror.fetch(request, route, "example.com")


@pytest.mark.parametrize("head_timeout", [0.3, 5.0])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v2/team/app/manifests/{DIGEST}"),
        ("HEAD", f"/v2/team/app/manifests/{DIGEST}"),
        ("HEAD", f"/v2/team/app/blobs/{DIGEST}"),
    ],
)
async def test_a_stalled_peer_past_the_budget_is_a_fast_miss(
    method: str, path: str, head_timeout: float
) -> None:
    # Regression: the budget running out mid-race used to raise UnboundLocalError (a 500).
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        stall = await _stalling_peer(nursery)
        cache = ProviderCache(FixedProviders([_provider(stall, b"stall")]), is_self=lambda p: False)
        await nursery.start(cache.run)
        settings = MirrorSettings(head_timeout=head_timeout, manifest_budget=0.3)
        mirror = PeerMirror(cache, settings, on_event=events.append)
        started = trio.current_time()
        assert await _fetch_path(mirror, method, path) is None
        assert 0.25 < trio.current_time() - started < 1.5
        assert [(event.outcome, event.status, event.method) for event in events] == [
            ("miss", 404, method)
        ]
        nursery.cancel_scope.cancel()


async def test_a_race_lost_to_the_budget_closes_its_connection() -> None:
    async with trio.open_nursery() as nursery:
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = int(listener.getsockname()[1])
        cache = ProviderCache(FixedProviders([_provider(port, b"stall")]), is_self=lambda p: False)
        await nursery.start(cache.run)
        mirror = PeerMirror(cache, MirrorSettings(manifest_budget=0.3))
        assert await _fetch_path(mirror, "HEAD", f"/v2/team/app/blobs/{DIGEST}") is None
        # Never accepted while the race ran: the connection waited in the backlog.
        with trio.fail_after(2), listener:
            sock, _ = await listener.accept()
            with sock:
                assert (await sock.recv(65536)).startswith(b"HEAD ")
                assert await sock.recv(65536) == b""  # the mirror hung up
        nursery.cancel_scope.cancel()


async def test_an_unsatisfiable_range_through_a_peer_is_a_416(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        good = _provider(await _good_peer(nursery, tmp_path), b"good")
        mirror = await _mirror(nursery, [good])
        target = f"/v2/team/app/blobs/{DIGEST}?ns=example.com"
        request = Request("GET", target, {"range": f"bytes={len(BLOB)}-"}, True, False)
        route = parse_distribution_path(request.path)
        assert route is not None
        response = await mirror.fetch(request, route, "example.com")
        assert response is not None and response.status == 416
        assert ("Content-Range", f"bytes */{len(BLOB)}") in response.headers
        nursery.cancel_scope.cancel()


async def test_redirect_mode_sends_the_client_to_a_complete_holder(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        good = await _good_peer(nursery, tmp_path)
        mirror = await _mirror(nursery, [_provider(good, b"good")], redirect=True)
        response = await _fetch(mirror)
        assert response is not None and response.status == 307
        location = dict(response.headers)["Location"]
        assert location == (
            f"http://127.0.0.1:{good}/v2/team/app/blobs/{DIGEST}?ns=example.com&mirrored=true"
        )
        # The holder serves its own content at that URL (the mark stands for the header).
        target = location.removeprefix(f"http://127.0.0.1:{good}")
        peer = await request_head("127.0.0.1", good, "GET", target, [])
        assert peer.status == 200 and peer.content_length == len(BLOB)
        peer.close()
        # A HEAD is answered here, as before.
        head = await _fetch(mirror, "HEAD")
        assert head is not None and head.status == 200
        nursery.cancel_scope.cancel()


async def test_several_ranges_through_a_peer_stay_several(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        good = await _good_peer(nursery, tmp_path)
        mirror = await _mirror(nursery, [_provider(good, b"good")])
        target = f"/v2/team/app/blobs/{DIGEST}?ns=example.com"
        request = Request("GET", target, {"range": "bytes=0-9,1000-1999"}, True, False)
        route = parse_distribution_path(request.path)
        assert route is not None
        response = await mirror.fetch(request, route, "example.com")
        assert response is not None and response.status == 206
        headers = dict(response.headers)
        body = await _body_through(response)
        nursery.cancel_scope.cancel()
    reply = Reply(206, {k.lower(): v for k, v in headers.items()}, body)
    assert byteranges(reply) == [
        (f"bytes 0-9/{len(BLOB)}", BLOB[:10]),
        (f"bytes 1000-1999/{len(BLOB)}", BLOB[1000:2000]),
    ]
