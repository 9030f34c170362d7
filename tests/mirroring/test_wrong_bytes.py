"""A peer that serves wrong bytes under the digest asked for (a poisoned DHT record,
a content store altered on disk): a manifest or small blob is proven before any byte
is sent and the next source serves it; a large blob from a complete holder never ends
cleanly; the liar is not asked for that digest again. Real loopback sockets; only the
DHT is a stand-in."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import trio

from mirror.mirroring.distrust import SourceDistrust
from mirror.mirroring.mirror import MirrorEvent, MirrorSettings, PeerMirror
from mirror.mirroring.movers import DigestMismatch
from mirror.mirroring.providers import ProviderCache
from mirror.oci.distribution import parse_distribution_path
from mirror.server.request import Request
from mirror.server.response import Response
from tests.mirroring.test_race import (
    BLOB,
    DIGEST,
    FixedProviders,
    _body_through,
    _fetch,
    _good_peer,
    _provider,
    _scripted_peer,
)

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST},
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def _altered(data: bytes, at: int = -1) -> bytes:
    """The same length, one byte flipped (as a file altered on disk)."""
    wrong = bytearray(data)
    wrong[at] ^= 0xFF
    return bytes(wrong)


def _answer(body: bytes, digest: str, content_type: str = "application/octet-stream") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: {content_type}\r\n"
        f"Docker-Content-Digest: {digest}\r\n\r\n"
    ).encode()


async def _mirror(nursery: trio.Nursery, ports: list[int], events: list[MirrorEvent]) -> PeerMirror:
    providers = [_provider(port, f"p{port}".encode()) for port in ports]
    cache = ProviderCache(FixedProviders(providers), is_self=lambda p: False)
    await nursery.start(cache.run)
    return PeerMirror(cache, MirrorSettings(), on_event=events.append)


async def _fetch_manifest(
    mirror: PeerMirror, reference: str, method: str = "GET"
) -> Response | None:
    request = Request(method, f"/v2/team/app/manifests/{reference}?ns=example.com", {}, True, False)
    route = parse_distribution_path(request.path)
    assert route is not None
    return await mirror.fetch(request, route, "example.com")


async def _manifest_peers(nursery: trio.Nursery) -> tuple[int, int]:
    """A peer that answers the manifest altered (and its digest unchanged), one that
    answers it right."""
    wrong = _altered(MANIFEST)
    liar = await _scripted_peer(nursery, _answer(wrong, MANIFEST_DIGEST, MANIFEST_TYPE), wrong)
    honest = await _scripted_peer(
        nursery, _answer(MANIFEST, MANIFEST_DIGEST, MANIFEST_TYPE), MANIFEST
    )
    return liar, honest


async def _small_blob_peer(nursery: trio.Nursery, body: bytes, digest: str) -> int:
    return await _scripted_peer(nursery, _answer(body, digest), body)


async def test_a_wrong_manifest_by_digest_is_never_sent_and_the_next_peer_serves_it() -> None:
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        liar, honest = await _manifest_peers(nursery)
        mirror = await _mirror(nursery, [liar, honest], events)
        response = await _fetch_manifest(mirror, MANIFEST_DIGEST)
        assert response is not None and response.body == MANIFEST
        assert dict(response.headers)["X-Mirror-Peer"] == f"127.0.0.1:{honest}"
        # Asked again, the liar is not tried first: its answer won the race before.
        events.clear()
        again = await _fetch_manifest(mirror, MANIFEST_DIGEST)
        assert again is not None and again.body == MANIFEST
        nursery.cancel_scope.cancel()
    assert [event.digest_mismatch for event in events] == [False]


async def test_a_wrong_manifest_with_no_other_source_is_a_miss() -> None:
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        liar = await _scripted_peer(
            nursery,
            _answer(_altered(MANIFEST), MANIFEST_DIGEST, MANIFEST_TYPE),
            _altered(MANIFEST),
        )
        mirror = await _mirror(nursery, [liar], events)
        assert await _fetch_manifest(mirror, MANIFEST_DIGEST) is None
        nursery.cancel_scope.cancel()
    mismatched = [event for event in events if event.digest_mismatch]
    assert len(mismatched) == 1 and mismatched[0].outcome == "failed"
    assert events[-1].outcome == "miss"


async def test_a_tag_answered_with_a_body_that_is_not_its_digest_goes_to_the_next_peer() -> None:
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        liar, honest = await _manifest_peers(nursery)
        mirror = await _mirror(nursery, [liar, honest], events)
        response = await _fetch_manifest(mirror, "v1")
        assert response is not None and response.body == MANIFEST
        nursery.cancel_scope.cancel()
    assert any(event.digest_mismatch for event in events)


async def test_a_wrong_small_blob_is_replaced_by_the_next_source() -> None:
    config = b'{"architecture": "amd64", "os": "linux"}' * 100
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        liar = await _small_blob_peer(nursery, _altered(config, 5), digest)
        honest = await _small_blob_peer(nursery, config, digest)
        mirror = await _mirror(nursery, [liar, honest], events)
        request = Request("GET", f"/v2/team/app/blobs/{digest}?ns=example.com", {}, True, False)
        route = parse_distribution_path(request.path)
        assert route is not None
        response = await mirror.fetch(request, route, "example.com")
        assert response is not None and response.body == config
        nursery.cancel_scope.cancel()
    assert [event.digest_mismatch for event in events] == [True, False]


@pytest.mark.parametrize("splice", [False, True])
async def test_a_wrong_blob_from_a_complete_holder_never_ends_and_its_source_is_dropped(
    splice: bool,
) -> None:
    wrong = _altered(BLOB)  # the last byte only: everything before it is right
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        liar = await _scripted_peer(nursery, _answer(wrong, DIGEST), wrong)
        providers = [_provider(liar, b"liar")]
        cache = ProviderCache(FixedProviders(providers), is_self=lambda p: False)
        await nursery.start(cache.run)
        mirror = PeerMirror(cache, MirrorSettings(use_splice=splice), on_event=events.append)
        response = await _fetch(mirror)
        assert response is not None and response.status == 200
        with pytest.raises(ExceptionGroup) as failed:
            await _body_through(response)
        assert failed.group_contains(DigestMismatch)
        # The pull's retry (containerd walks its hosts again) gets a fast miss, not
        # the same wrong bytes.
        assert await _fetch(mirror) is None
        nursery.cancel_scope.cancel()
    mismatched = [event for event in events if event.digest_mismatch]
    assert len(mismatched) == 1 and mismatched[0].bytes < len(BLOB)


async def test_a_dropped_source_leaves_the_honest_one(tmp_path: Path) -> None:
    wrong = _altered(BLOB, 1000)
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        liar = await _scripted_peer(nursery, _answer(wrong, DIGEST), wrong)
        honest = await _good_peer(nursery, tmp_path)
        mirror = await _mirror(nursery, [liar, honest], events)
        first = await _fetch(mirror)
        assert first is not None
        with pytest.raises(ExceptionGroup):
            await _body_through(first)
        second = await _fetch(mirror)
        assert second is not None
        assert dict(second.headers)["X-Mirror-Peer"] == f"127.0.0.1:{honest}"
        assert await _body_through(second) == BLOB
        nursery.cancel_scope.cancel()


def test_distrust_lapses_and_stays_bounded() -> None:
    distrust = SourceDistrust(ttl=10.0, capacity=2)
    distrust.distrust("sha256:a", ("10.0.0.1", 5000), now=0.0)
    assert distrust.distrusted("sha256:a", ("10.0.0.1", 5000), now=9.0)
    assert not distrust.distrusted("sha256:b", ("10.0.0.1", 5000), now=9.0)
    assert not distrust.distrusted("sha256:a", ("10.0.0.2", 5000), now=9.0)
    assert not distrust.distrusted("sha256:a", ("10.0.0.1", 5000), now=10.0)
    for n in range(3):
        distrust.distrust(f"sha256:{n}", ("10.0.0.1", 5000), now=0.0)
    assert len(distrust) == 2
    assert not distrust.distrusted("sha256:0", ("10.0.0.1", 5000), now=1.0)
