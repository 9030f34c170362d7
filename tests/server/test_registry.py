"""The registry's one route: ready answers, including prepared manifests, and pulls."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import trio
import trio.testing

from mirror.basicauth import BasicAuth
from mirror.server.localstore import LocalStore, TagTarget, target_from
from mirror.server.registry import RegistryHandler
from mirror.server.request import Request
from mirror.server.streamcap import StreamCap

MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "a" * 64,
            "size": 2,
        },
        "layers": [],
    }
).encode()


class Tags:
    def __init__(self, targets: dict[str, TagTarget]) -> None:
        self.targets = targets
        self.calls = 0

    async def resolve(self, image_name: str) -> TagTarget | None:
        self.calls += 1
        return self.targets.get(image_name)


def _store(root: Path) -> tuple[LocalStore, Tags, str]:
    digest = hashlib.sha256(MANIFEST).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "blobs" / "sha256" / digest).write_bytes(MANIFEST)
    target = target_from(f"sha256:{digest}", MEDIA_TYPE, len(MANIFEST))
    tags = Tags({"docker.io/team/app:v1": target})
    return LocalStore(root, tags, tag_ttl=2.0), tags, f"sha256:{digest}"


def _get(target: str, method: str = "GET", **headers: str) -> Request:
    return Request(method, target, dict(headers), keep_alive=True, has_body=False)


async def test_a_repeated_tag_request_is_answered_from_the_route_until_the_tag_moves(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store, tags, digest = _store(tmp_path)
    handler = RegistryHandler(store)
    target = "/v2/team/app/manifests/v1?ns=docker.io"
    first = await handler(_get(target))
    assert (first.status, first.body, first.handler) == (200, MANIFEST, "manifest")
    assert dict(first.headers)["Docker-Content-Digest"] == digest
    again = await handler(_get(target, "HEAD"))
    assert (again.status, again.body) == (200, MANIFEST)
    assert tags.calls == 1
    store.forget_tag("docker.io/team/app:v1")
    await handler(_get(target))
    assert tags.calls == 2
    await trio.sleep(2.5)  # past the tag TTL: the prepared answer expired too
    await handler(_get(target))
    assert tags.calls == 3


async def test_ranges_and_other_methods_do_not_take_a_prepared_answer(tmp_path: Path) -> None:
    store, _, digest = _store(tmp_path)
    handler = RegistryHandler(store)
    target = f"/v2/team/app/manifests/{digest}"
    assert (await handler(_get(target))).status == 200
    partial = await handler(_get(target, range="bytes=0-3"))
    assert (partial.status, partial.body) == (206, MANIFEST[:4])
    refused = await handler(_get(target, "DELETE"))
    assert refused.status == 405
    assert ("Allow", "GET, HEAD") in refused.headers


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/v2/team/app/blobs/uploads/"),
        ("PUT", "/v2/team/app/manifests/v1"),
        ("PATCH", "/v2/team/app/blobs/uploads/1234"),
        ("DELETE", "/v2/"),
    ],
)
async def test_pushes_are_a_method_not_allowed(tmp_path: Path, method: str, target: str) -> None:
    store, _, _ = _store(tmp_path)
    refused = await RegistryHandler(store)(_get(target, method))
    assert refused.status == 405
    assert ("Allow", "GET, HEAD") in refused.headers


async def test_a_deleted_manifest_stops_being_served_by_digest(tmp_path: Path) -> None:
    store, _, digest = _store(tmp_path)
    handler = RegistryHandler(store)
    target = f"/v2/team/app/manifests/{digest}"
    assert (await handler(_get(target))).status == 200
    assert (await handler(_get(target))).status == 200  # the prepared answer
    (tmp_path / "blobs" / "sha256" / digest.removeprefix("sha256:")).unlink()
    store.forget_digest(digest)  # what the advertiser says on /content/delete
    assert (await handler(_get(target))).status == 404


async def test_a_manifest_deleted_without_an_event_is_not_served_from_the_cache(
    tmp_path: Path,
) -> None:
    store, _, digest = _store(tmp_path)
    handler = RegistryHandler(store)
    target = f"/v2/team/app/manifests/{digest}"
    assert (await handler(_get(target, range="bytes=0-1"))).status == 206  # cached, not prepared
    (tmp_path / "blobs" / "sha256" / digest.removeprefix("sha256:")).unlink()
    assert (await handler(_get(target, range="bytes=0-1"))).status == 404


async def test_connect_is_refused_and_ends_the_connection(tmp_path: Path) -> None:
    store, _, _ = _store(tmp_path)
    refused = await RegistryHandler(store)(_get("example.com:443", "CONNECT"))
    assert (refused.status, refused.close) == (405, True)


async def test_health_and_unknown_paths(tmp_path: Path) -> None:
    store, _, _ = _store(tmp_path)
    handler = RegistryHandler(store, ready=lambda: False)
    assert (await handler(_get("/livez"))).status == 200
    assert (await handler(_get("/readyz"))).status == 503
    assert (await handler(_get("/nope"))).status == 404
    missing = await handler(_get("/v2/team/app/blobs/sha256:" + "c" * 64))
    assert (missing.status, missing.handler) == (404, "blob")


async def test_a_local_miss_is_reported_with_its_key(tmp_path: Path) -> None:
    store, _, digest = _store(tmp_path)
    missed: list[str] = []
    handler = RegistryHandler(store, on_local_miss=missed.append)
    gone = "sha256:" + "b" * 64
    assert (await handler(_get(f"/v2/team/app/blobs/{gone}?ns=docker.io"))).status == 404
    assert (await handler(_get("/v2/team/app/manifests/v2?ns=docker.io"))).status == 404
    assert (await handler(_get(f"/v2/team/app/manifests/{digest}?ns=docker.io"))).status == 200
    assert missed == [gone, "docker.io/team/app:v2"]  # what was served is not reported


class CountingMiss:
    def __init__(self) -> None:
        self.calls = 0

    async def fetch(self, request: Request, path: object, registry: str | None) -> None:
        await trio.lowlevel.checkpoint()
        self.calls += 1


async def test_basic_auth_guards_everything_but_the_probes(tmp_path: Path) -> None:
    store, _, digest = _store(tmp_path)
    auth = BasicAuth.from_credentials(b"hello", b"world")
    miss = CountingMiss()
    handler = RegistryHandler(store, auth=auth, miss=miss)
    target = f"/v2/team/app/manifests/{digest}"
    good = auth.header_value
    assert (await handler(_get(target, authorization=good))).status == 200
    for headers in ({}, {"authorization": "Basic d3Jvbmc6d3Jvbmc="}, {"authorization": good[1:]}):
        # Not even the answer prepared for this exact target a moment ago.
        for path in (target, "/v2/", "/v2/team/app/blobs/sha256:" + "c" * 64, "/nope"):
            refused = await handler(_get(path, **headers))
            assert refused.status == 401, (path, headers)
            assert ("WWW-Authenticate", 'Basic realm="mirror"') in refused.headers
            assert json.loads(refused.body)["errors"][0]["code"] == "UNAUTHORIZED"
        # A peer's request without the credentials cannot make this node ask its peers.
        missing = f"/v2/team/app/blobs/sha256:{'d' * 64}?ns=docker.io"
        assert (await handler(_get(missing, **headers))).status == 401
    assert miss.calls == 0
    assert (await handler(_get(missing, authorization=good))).status == 404
    assert miss.calls == 1
    for probe in ("/livez", "/readyz", "/healthz"):
        assert (await handler(_get(probe))).status == 200, probe
    assert (await handler(_get("/v2/", authorization=good))).status == 200


async def test_a_client_a_peer_redirected_here_is_never_told_busy(tmp_path: Path) -> None:
    """--mirror-relay=redirect: a peer's mirror sent containerd here with the mark in the
    URL; a 503 would send it upstream, so past the stream cap it is still served (and
    counted, so the next relayed peer is told busy)."""
    store, _, _ = _store(tmp_path)
    blob = b"layer" * 1000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    (tmp_path / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(blob)
    cap = StreamCap(1)
    assert cap.acquire("sha256:" + "c" * 64)  # another body already streams to a peer
    handler = RegistryHandler(store, stream_cap=cap)
    path = f"/v2/team/app/blobs/{digest}?ns=docker.io"
    busy = await handler(_get(path, **{"x-spegel-mirrored": "true"}))
    assert busy.status == 503
    redirected = await handler(_get(path + "&mirrored=true"))
    assert redirected.status == 200
    assert len(cap) == 2
    redirected.release()


async def test_a_stripes_range_is_served_from_spare_uplink_only(tmp_path: Path) -> None:
    """A striped fetch's range for a holder other than its first is busy as soon as this
    node streams anything to a peer: a stripe must not take a stream another puller
    needs. Without the mark the same request is served under the cap as usual."""
    store, _, _ = _store(tmp_path)
    blob = b"layer" * 1000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    (tmp_path / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(blob)
    cap = StreamCap(3)
    handler = RegistryHandler(store, stream_cap=cap)
    path = f"/v2/team/app/blobs/{digest}?ns=docker.io"
    peer = {"x-spegel-mirrored": "true", "range": "bytes=0-99"}
    idle = await handler(_get(path, **peer, **{"x-mirror-stripe": "spare"}))
    assert idle.status == 206 and len(cap) == 1  # nothing else streams: served
    busy = await handler(_get(path, **peer, **{"x-mirror-stripe": "spare"}))
    assert busy.status == 503 and len(cap) == 1
    plain = await handler(_get(path, **peer))
    assert plain.status == 206 and len(cap) == 2  # two of three: room for a plain peer
    idle.release()
    plain.release()
    assert len(cap) == 0
