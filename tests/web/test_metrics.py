"""Telemetry on its own: what one response or one mirror event adds to the metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from dht import Provider
from mirror.metrics import (
    MAX_KNOWN_ADDRESSES,
    MAX_PEER_LABELS,
    MEASURE_HEADER,
    RESPONSE_SIZE_BUCKETS,
    FeedEvent,
    Telemetry,
    TimedProviders,
    handler_label,
)
from mirror.mirroring.mirror import PEER_HEADER, MirrorEvent
from mirror.server.registry import MIRRORED_HEADER
from mirror.server.request import Request
from mirror.server.response import Response
from mirror.web.collector import AdvertisedCounts

BLOB = "/v2/team/app/blobs/sha256:" + "a" * 64


def _request(path: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Request:
    return Request(method, path, headers or {}, True, False)


def _value(telemetry: Telemetry, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(telemetry.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise KeyError((name, labels))


def test_handler_labels_match_the_registry_routes() -> None:
    assert handler_label(BLOB) == "blob"
    assert handler_label("/v2/team/app/manifests/v1") == "manifest"
    assert handler_label("/v2/") == "v2"
    assert handler_label("/readyz") == "readyz"
    assert handler_label("/livez") == "livez"
    assert handler_label("/favicon.ico") == "other"


def test_spegel_response_size_buckets() -> None:
    assert RESPONSE_SIZE_BUCKETS[0] == 1024 and RESPONSE_SIZE_BUCKETS[-1] == 1024 * 5**9
    assert len(RESPONSE_SIZE_BUCKETS) == 10


def _peer_response(status: int = 200, body: bytes = b"x" * 10) -> Response:
    response = Response(status, [(PEER_HEADER, "127.0.0.3:5000")], body, handler="blob")
    response.source, response.mirrored = "peer", True
    return response


def test_a_local_miss_of_containerd_served_by_a_peer_is_a_hit() -> None:
    clock = iter([1000.0, 1001.0]).__next__
    telemetry = Telemetry(clock=clock)
    telemetry.observe(_request(BLOB + "?ns=docker.io"), _peer_response(), 10, 0.25)
    assert _value(telemetry, "spegel_mirror_requests_total", registry="docker.io", cache="hit") == 1
    assert _value(telemetry, "spegel_mirror_last_success_timestamp_seconds") == 1000.0
    assert _value(telemetry, "mirror_served_bytes_total", source="peer", client="containerd") == 10
    assert _value(telemetry, "mirror_upstream_bytes_avoided_total") == 10
    assert _value(telemetry, "mirror_registry_requests_total", client="containerd", result="hit")
    labels = {"handler": "blob", "method": "GET", "code": "200"}
    assert _value(telemetry, "http_request_duration_seconds_sum", **labels) == 0.25
    assert _value(telemetry, "http_response_size_bytes_sum", **labels) == 10
    assert telemetry.last_success == 1000.0 and telemetry.mirror_counts == {"hit": 1, "miss": 0}
    (seq, event), *_ = telemetry.feed.recent(1)
    assert isinstance(event, FeedEvent) and seq == 1
    assert event.peer == "127.0.0.3:5000" and event.result == "hit"
    assert event.client == "containerd"
    assert event.repository == "team/app" and event.reference.startswith("sha256:")


def test_content_served_from_this_nodes_disk_is_no_mirror_success() -> None:
    """A re-pull of an image the node holds: Spegel counts nothing (its handler serves
    local content without going through the mirror), so neither do we."""
    telemetry = Telemetry(clock=lambda: 1000.0)
    local = Response(200, [], b"y" * 7, handler="manifest", source="local")
    telemetry.observe(_request(BLOB + "?ns=docker.io"), local, 7, 0.001)
    assert telemetry.last_success is None
    assert telemetry.mirror_counts == {"hit": 0, "miss": 0}
    assert _value(telemetry, "spegel_mirror_last_success_timestamp_seconds") == 0
    assert _value(telemetry, "mirror_registry_requests_total", client="containerd", result="local")
    assert _value(telemetry, "mirror_served_bytes_total", source="local", client="containerd") == 7
    assert _value(telemetry, "mirror_upstream_bytes_avoided_total") == 0
    assert telemetry.summary()["local"] == 1
    assert [event.result for _, event in telemetry.feed.recent(5)] == ["local"]


def test_measure_requests_are_counted_apart_from_containerds() -> None:
    telemetry = Telemetry(clock=lambda: 1000.0)
    measure = {MEASURE_HEADER.lower(): "1"}
    through_peer = _request(BLOB + "?ns=docker.io", headers=measure)
    telemetry.observe(through_peer, _peer_response(), 10, 0.01)
    local = Response(200, [], b"y" * 7, handler="blob", source="local")
    telemetry.observe(_request(BLOB + "?ns=docker.io", headers=measure), local, 7, 0.01)
    assert telemetry.last_success is None
    assert telemetry.mirror_counts == {"hit": 0, "miss": 0}
    assert _value(telemetry, "mirror_registry_requests_total", client="measure", result="hit") == 1
    assert _value(telemetry, "mirror_registry_requests_total", client="measure", result="local")
    assert _value(telemetry, "mirror_served_bytes_total", source="peer", client="measure") == 10
    assert _value(telemetry, "mirror_upstream_bytes_avoided_total") == 0
    assert telemetry.summary()["measure"] == 2
    assert {event.client for _, event in telemetry.feed.recent(5)} == {"measure"}


def test_a_fast_404_is_a_miss_and_a_peer_request_is_not_a_mirror_request() -> None:
    telemetry = Telemetry()
    miss = Response(404, handler="blob")
    miss.mirrored = True
    telemetry.observe(_request(BLOB + "?ns=ghcr.io"), miss, 0, 0.001)
    assert _value(telemetry, "spegel_mirror_requests_total", registry="ghcr.io", cache="miss") == 1
    from_peer = _request(BLOB + "?ns=ghcr.io", headers={MIRRORED_HEADER: "true"})
    from_peer.client = "127.0.0.9"
    telemetry.observe(from_peer, Response(200, handler="blob"), 5, 0.001)
    assert telemetry.mirror_counts == {"hit": 0, "miss": 1}
    assert telemetry.last_success is None
    events = [event for _, event in telemetry.feed.recent(5)]
    assert [(event.client, event.result) for event in events] == [
        ("containerd", "miss"),
        ("peer", "local"),
    ]
    assert events[1].peer == "127.0.0.9"  # the peer served, by its address
    assert _value(telemetry, "mirror_served_bytes_total", source="local", client="peer") == 5
    assert _value(telemetry, "mirror_peer_sent_bytes_total", peer="127.0.0.9") == 5
    assert telemetry.summary()["served"] == 1 and telemetry.summary()["bytes_to_peers"] == 5


def test_a_404_never_handed_to_the_peers_is_no_mirror_miss() -> None:
    """Filtered out, or no mirror: Spegel returns before its mirror handler counts."""
    telemetry = Telemetry()
    telemetry.observe(_request(BLOB + "?ns=ghcr.io"), Response(404, handler="blob"), 0, 0.001)
    assert telemetry.mirror_counts == {"hit": 0, "miss": 0}
    assert _value(telemetry, "mirror_registry_requests_total", client="containerd", result="miss")


def test_a_body_cut_short_is_failed_and_a_mirror_miss() -> None:
    telemetry = Telemetry()
    cut = _peer_response(body=b"z" * 100)
    telemetry.observe(_request(BLOB + "?ns=docker.io"), cut, 0, 0.5)  # sent 0 of 100
    assert telemetry.mirror_counts == {"hit": 0, "miss": 1} and telemetry.last_success is None
    assert _value(telemetry, "mirror_registry_requests_total", client="containerd", result="failed")
    head = _peer_response(body=b"z" * 100)
    telemetry.observe(_request(BLOB + "?ns=docker.io", method="HEAD"), head, 0, 0.01)
    assert telemetry.mirror_counts == {"hit": 1, "miss": 1}


def test_per_peer_series_are_capped_with_an_other_bucket() -> None:
    telemetry = Telemetry()
    for n in range(MAX_PEER_LABELS + 10):
        telemetry.peer_received(f"10.0.{n // 256}.{n % 256}", 100)
        telemetry.peer_failed(f"10.0.{n // 256}.{n % 256}", "unreachable")
    received = [
        sample
        for family in text_string_to_metric_families(telemetry.exposition().decode())
        for sample in family.samples
        if sample.name == "mirror_peer_received_bytes_total"
    ]
    assert len(received) == MAX_PEER_LABELS + 1
    assert _value(telemetry, "mirror_peer_received_bytes_total", peer="other") == 10 * 100
    assert _value(telemetry, "mirror_peer_failures_total", peer="other", reason="unreachable") == 10
    assert _value(telemetry, "mirror_peer_received_bytes_total", peer="10.0.0.0") == 100


def test_registry_addresses_of_peers_met_in_lookups_are_bounded() -> None:
    telemetry = Telemetry()
    for n in range(MAX_KNOWN_ADDRESSES + 5):
        telemetry.saw_provider(Provider(n.to_bytes(16, "big"), "10.0.0.1", 5001, 5000 + n % 7))
    assert len(telemetry.registry_addresses) == MAX_KNOWN_ADDRESSES
    newest = (MAX_KNOWN_ADDRESSES + 4).to_bytes(16, "big")
    assert (
        telemetry.registry_addresses[newest] == f"10.0.0.1:{5000 + (MAX_KNOWN_ADDRESSES + 4) % 7}"
    )


def test_probes_are_timed_but_not_mirror_requests() -> None:
    telemetry = Telemetry()
    telemetry.observe(_request("/readyz"), Response(200, handler="readyz"), 3, 0.001)
    labels = {"handler": "readyz", "method": "GET", "code": "200"}
    assert _value(telemetry, "http_request_duration_seconds_count", **labels) == 1
    assert telemetry.feed.published == 0


async def test_inflight_counts_requests_until_their_body_is_sent() -> None:
    telemetry = Telemetry()
    release = trio.Event()

    async def handler(request: Request) -> Response:
        await release.wait()
        return Response(200, handler="blob")

    instrumented = telemetry.instrument(handler)
    request = _request(BLOB)
    async with trio.open_nursery() as nursery:

        async def respond() -> None:
            response = await instrumented(request)
            assert _value(telemetry, "http_requests_inflight", handler="blob") == 1
            telemetry.observe(request, response, 0, 0.0)

        nursery.start_soon(respond)
        await trio.testing.wait_all_tasks_blocked()
        assert _value(telemetry, "http_requests_inflight", handler="blob") == 1
        release.set()
    assert _value(telemetry, "http_requests_inflight", handler="blob") == 0
    with trio.CancelScope() as scope:
        scope.cancel()
        await instrumented(request)  # cancelled inside the handler: observe never runs
    assert _value(telemetry, "http_requests_inflight", handler="blob") == 0


def test_mirror_events_count_outcomes_relays_and_resumes() -> None:
    telemetry = Telemetry(relay_mode="splice")
    telemetry.on_mirror_event(
        MirrorEvent("blob", "GET", "sha256:x", "docker.io", "peer", "p:1", 200, 9, 0.5, 2, 0.01)
    )
    telemetry.on_mirror_event(
        MirrorEvent("manifest", "GET", "docker.io/a:b", "docker.io", "miss", "", 404, 0, 0.02)
    )
    assert _value(telemetry, "mirror_peer_requests_total", kind="blob", outcome="peer") == 1
    assert _value(telemetry, "mirror_peer_requests_total", kind="manifest", outcome="miss") == 1
    assert _value(telemetry, "mirror_relay_bodies_total", mode="splice", outcome="peer") == 1
    assert _value(telemetry, "mirror_relay_resumes_total") == 2
    assert _value(telemetry, "mirror_peer_time_to_head_seconds_count") == 1
    with pytest.raises(KeyError):  # a body from one peer is not a striped one
        _value(telemetry, "mirror_striped_bodies_total", outcome="peer")


def test_striped_bodies_are_counted_by_outcome() -> None:
    telemetry = Telemetry()
    for outcome in ("peer", "peer", "failed"):
        telemetry.on_mirror_event(
            MirrorEvent("blob", "GET", "sha256:x", "", outcome, "p:1", 200, 9, 0.5, striped=3)
        )
    assert _value(telemetry, "mirror_striped_bodies_total", outcome="peer") == 2
    assert _value(telemetry, "mirror_striped_bodies_total", outcome="failed") == 1


async def test_resolve_duration_is_the_time_to_the_first_other_provider() -> None:
    me = Provider(b"\x01" * 16, "127.0.0.1", 5001, 5000)
    other = Provider(b"\x02" * 16, "127.0.0.2", 5001, 5000)

    class Source:
        async def get_providers(self, key: str, limit: int = 20) -> AsyncIterator[Provider]:
            yield me
            await trio.sleep(0.05)
            if key == "found":
                yield other

    telemetry = Telemetry()
    timed = TimedProviders(Source(), telemetry, is_self=lambda p: p == me)
    assert [p async for p in timed.get_providers("found")] == [me, other]
    assert [p async for p in timed.get_providers("nobody")] == [me]
    count = _value(telemetry, "spegel_resolve_duration_seconds_count", router="dht")
    assert count == 1
    assert _value(telemetry, "spegel_resolve_duration_seconds_sum", router="dht") >= 0.05
    assert _value(telemetry, "mirror_resolve_not_found_total") == 1


def test_advertised_counts_follow_spegel() -> None:
    counts = AdvertisedCounts.of(
        {
            "docker.io/library/nginx:1.27": frozenset({"a", "b", "c"}),
            "ghcr.io/org/tool@sha256:" + "b" * 64: frozenset({"d"}),
            "ghcr.io/org/tool:v2": frozenset({"d", "e"}),
        }
    )
    assert counts.images == {"docker.io": 1, "ghcr.io": 2}
    assert counts.tags == {"docker.io": 1, "ghcr.io": 1}
    assert counts.digests == {"ghcr.io": 1}
    assert counts.keys == {"docker.io": 3, "ghcr.io": 3}


def test_content_digests_count_each_digest_once_per_registry() -> None:
    """Spegel's dashboard charts `spegel_advertised_content_digests` (and lists pods by it)."""
    layer, config = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    counts = AdvertisedCounts.of(
        {
            "docker.io/library/nginx:1.27": frozenset(
                {"docker.io/library/nginx:1.27", "sha256:" + "a" * 64, layer, config}
            ),
            "docker.io/library/nginx:1.28": frozenset(
                {"docker.io/library/nginx:1.28", "sha256:" + "c" * 64, layer}
            ),
            "ghcr.io/org/tool@sha256:" + "b" * 64: frozenset({"sha256:" + "b" * 64, layer}),
        }
    )
    assert counts.contents == {"docker.io": 4, "ghcr.io": 2}
    assert counts.keys == {"docker.io": 7, "ghcr.io": 2}
