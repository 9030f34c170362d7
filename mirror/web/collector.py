"""Gauges and counters read from the node's state at scrape time, never on the hot path."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dht import NodeStats
from mirror.ingest.state import ColdStartState
from mirror.oci.reference import parse_image_name, split_registry
from mirror.web.view import NodeView, RegistryView

_DROP_REASONS = (
    "malformed",
    "oversized",
    "unauthenticated",
    "replayed",
    "stale",
    "unsolicited",
    "unverified",
)
_REFUSAL_REASONS = ("client", "capacity", "descriptors")


@dataclass
class AdvertisedCounts:
    """Spegel's per-registry counts: images, those named by tag or by digest, their keys,
    and the distinct content digests among those keys (Spegel's `content_digests`)."""

    images: Counter[str] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    digests: Counter[str] = field(default_factory=Counter)
    keys: Counter[str] = field(default_factory=Counter)
    contents: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, images: Mapping[str, frozenset[str]]) -> AdvertisedCounts:
        counts = cls()
        content: dict[str, set[str]] = {}
        for name, keys in images.items():
            try:
                parsed = parse_image_name(name)
                registry, tagged = parsed.registry, parsed.tag is not None
            except ValueError:
                registry, tagged = split_registry(name)[0], "@" not in name
            counts.images[registry] += 1
            (counts.tags if tagged else counts.digests)[registry] += 1
            counts.keys[registry] += len(keys)
            # A tag's key is `registry/repository:tag`; every other key is a digest.
            content.setdefault(registry, set()).update(k for k in keys if "/" not in k)
        counts.contents.update({registry: len(d) for registry, d in content.items() if d})
        return counts


def _per_registry(name: str, help_text: str, values: Counter[str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=["registry"])
    for registry, value in sorted(values.items()):
        family.add_metric([registry], value)
    return family


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def coldstart_families(state: ColdStartState) -> Iterator[Metric]:
    downloads = state.in_progress()
    yield _gauge(
        "mirror_inflight_downloads",
        "Blobs this node's containerd is downloading now (ingests), each a source for peers.",
        len(downloads),
    )
    yield _gauge(
        "mirror_inflight_download_bytes",
        "Bytes on disk of the downloads in progress.",
        sum(ingest.size for ingest in downloads),
    )
    yield _gauge(
        "mirror_coldstart_claims_held",
        "Blobs this node claimed: its containerd fetches them from the upstream for the cluster.",
        len(state.claims_held()),
    )
    yield _gauge(
        "mirror_peer_streams",
        "Blob bodies this node is streaming to peers now.",
        len(state.streams),
    )
    yield _counter(
        "mirror_peer_streams_refused",
        "Peer requests answered busy (503): this node was already streaming --peer-streams "
        "bodies to peers.",
        state.streams.refused,
    )
    yield _counter(
        "mirror_peer_streams_preempted",
        "Streams to peers that would not pass the blob on, ended to make room for one that "
        "would (it resumes from another source).",
        state.streams.preempted,
    )
    ended = CounterMetricFamily(
        "mirror_inflight_downloads_ended",
        "Downloads in progress that ended, committed or aborted.",
        labels=["how"],
    )
    ended.add_metric(["committed"], state.announcer.committed)
    ended.add_metric(["aborted"], state.announcer.aborted)
    yield ended
    yield _counter(
        "mirror_inflight_announcements",
        "In-flight provider records published to the DHT.",
        state.announcer.announced,
    )


def registry_families(registry: RegistryView) -> Iterator[Metric]:
    yield _gauge(
        "mirror_registry_connection_limit",
        "Connections the registry port serves at once (from RLIMIT_NOFILE at start).",
        registry.limits.connections,
    )
    yield _gauge(
        "mirror_registry_client_connection_limit",
        "Connections one client address may hold on the registry port "
        "(--registry-client-connections; 0: no limit).",
        registry.limits.per_client,
    )
    refused = CounterMetricFamily(
        "mirror_registry_refused",
        "Connections or requests the registry port turned away (503 with Retry-After, or a "
        "close when even its lobby was full), by reason: client (the address held its limit), "
        "capacity (the port held its limit), descriptors (the process ran out of them).",
        labels=["reason"],
    )
    counts = registry.refused
    for reason in _REFUSAL_REASONS:
        refused.add_metric([reason], counts.get(reason, 0))
    yield refused


def families(
    advertised: AdvertisedCounts, stats: NodeStats | None, open_connections: int
) -> Iterator[Metric]:
    yield _per_registry(
        "spegel_advertised_images",
        "Number of images advertised to be available.",
        advertised.images,
    )
    yield _per_registry(
        "spegel_advertised_image_tags",
        "Number of image tags advertised to be available.",
        advertised.tags,
    )
    yield _per_registry(
        "spegel_advertised_image_digests",
        "Number of image digests advertised to be available.",
        advertised.digests,
    )
    yield _per_registry(
        "spegel_advertised_content_digests",
        "Number of content digests advertised to be available.",
        advertised.contents,
    )
    yield _per_registry(
        "spegel_advertised_keys", "Number of keys advertised to be available.", advertised.keys
    )
    yield _gauge(
        "mirror_open_connections",
        "Client connections open on the registry port.",
        open_connections,
    )
    if stats is None:
        return
    yield _gauge(
        "mirror_dht_routing_table_size",
        "Contacts in the DHT routing table.",
        stats.routing_table_size,
    )
    yield _counter("mirror_dht_lookups", "DHT provider lookups started.", stats.lookups)
    datagrams = CounterMetricFamily(
        "mirror_dht_datagrams", "DHT datagrams received and sent.", labels=["direction"]
    )
    datagrams.add_metric(["in"], stats.datagrams_in)
    datagrams.add_metric(["out"], stats.datagrams_out)
    yield datagrams
    dropped = CounterMetricFamily(
        "mirror_dht_datagrams_dropped",
        "Received DHT datagrams dropped, by reason.",
        labels=["reason"],
    )
    for reason in _DROP_REASONS:
        dropped.add_metric([reason], getattr(stats, f"dropped_{reason}"))
    yield dropped
    yield _counter("mirror_dht_requests_sent", "DHT requests sent.", stats.requests_sent)
    yield _counter(
        "mirror_dht_request_timeouts", "DHT requests that got no reply in time.", stats.timeouts
    )
    yield _gauge(
        "mirror_dht_records_stored",
        "Provider records this node stores for others.",
        stats.records_stored,
    )
    yield _gauge(
        "mirror_dht_keys_provided",
        "Keys this node provides (re-provided before their TTL).",
        stats.keys_provided,
    )


class NodeCollector(Collector):
    def __init__(self, view: NodeView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view
        yield from families(
            AdvertisedCounts.of(view.advertiser.images),
            view.dht.stats,
            view.registry.open_connections,
        )
        yield from registry_families(view.registry)
        if view.coldstart is not None:
            yield from coldstart_families(view.coldstart)

    def describe(self) -> Iterator[Metric]:
        empty = NodeStats(**{name: 0 for name in NodeStats.__dataclass_fields__})
        yield from families(AdvertisedCounts(), empty, 0)
        yield from registry_families(self._view.registry)
        if self._view.coldstart is not None:
            yield from coldstart_families(self._view.coldstart)
