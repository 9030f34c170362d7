"""What the hot path records: Prometheus counters and the live event feed.

Everything here is synchronous and O(1) per request: a few dict lookups,
counter increments and one append to a bounded feed (and, for a body of 1 MiB or
more, one entry in the table of transfers in progress: transfers.py). Nothing here
awaits, so nothing here can slow a response down by waiting on a scrape or a
websocket. Metric names and labels are Spegel's where Spegel has one, with Spegel's
meaning (a mirror request is a local miss of containerd's, a hit is a peer serving
it), so its Grafana dashboard keeps working; ours carry the `mirror_` prefix and
count by who asked (containerd, a peer, Measure) and per peer. See docs/metrics.md.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import prometheus_client
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mirror.mirroring.mirror import PEER_HEADER
from mirror.server.connection import Handler
from mirror.server.registry import from_peer
from mirror.server.request import Request
from mirror.server.response import Body, Response
from mirror.transfers import TRACK_FROM, Transfer, Transfers
from mirror.version import VERSION
from mirror.web.feed import EventFeed

if TYPE_CHECKING:
    from dht import Provider
    from mirror.mirroring.mirror import MirrorEvent

# Spegel's http_response_size_bytes buckets: 1 kB up to 2 GB.
RESPONSE_SIZE_BUCKETS = tuple(1024.0 * 5**i for i in range(10))
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The label Spegel puts on its DHT resolver is "libp2p"; ours is not libp2p.
ROUTER_LABEL = "dht"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONTENT = frozenset({"blob", "manifest"})
# `registry` comes from the client's `ns` parameter: bound the label's cardinality.
MAX_REGISTRY_LABELS = 256
# Peers come and go: the per-peer series name this many, then "other".
MAX_PEER_LABELS = 128
# Registry addresses of peers met in lookups, kept for the page's peer table.
MAX_KNOWN_ADDRESSES = 1024
OTHER = "other"
# Sent by Measure Image Pull on its requests to its own node, so they are counted apart.
MEASURE_HEADER = "X-Mirror-Measure"
_MEASURE_HEADER = MEASURE_HEADER.lower()
# Who asked (the `client` label, the feed's `client`).
CONTAINERD, PEER, MEASURE = "containerd", "peer", "measure"
CLIENTS = (CONTAINERD, PEER, MEASURE)
# How a blob or manifest request was answered (the `result` label, the feed's `result`):
# a peer served it (relayed whole), this node did (its content store, or a download
# in progress for a peer), nobody (404: containerd goes to the next host), the body
# was cut short, any other status.
HIT, LOCAL, MISS, FAILED, ERROR = "hit", "local", "miss", "failed", "error"
RESULTS = (HIT, LOCAL, MISS, FAILED, ERROR)
_SOURCES = ("local", "peer", "inflight")

# Go's client emits no `_created` series; neither should we (process-wide switch).
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def handler_label(path: str) -> str:
    """The `handler` label of a request before it is answered (for the in-flight gauge)."""
    if path.startswith("/v2/"):
        if "/blobs/" in path:
            return "blob"
        if "/manifests/" in path:
            return "manifest"
        return "v2" if path == "/v2/" else "other"
    if path in ("/readyz", "/healthz"):
        return "readyz"
    if path == "/livez":
        return "livez"
    return "v2" if path == "/v2" else "other"


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One blob or manifest answer, as the debug page and `mirror watch` show it."""

    time: float  # wall clock, seconds
    kind: str  # "blob" | "manifest"
    method: str
    path: str
    registry: str
    client: str  # who asked: "containerd" | "peer" | "measure"
    result: str  # see RESULTS
    source: str  # "local" | "peer" | "inflight" | ""
    # The other node: the peer that served it (source "peer", host:registry port), or
    # the peer that was served (client "peer", its address).
    peer: str
    status: int
    bytes: int
    duration: float

    @property
    def reference(self) -> str:
        """The tag or digest at the end of the path."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def repository(self) -> str:
        inner = self.path.removeprefix("/v2/")
        for section in ("/blobs/", "/manifests/"):
            name, found, _ = inner.rpartition(section)
            if found:
                return name
        return inner

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": self.kind,
            "method": self.method,
            "repository": self.repository,
            "reference": self.reference,
            "registry": self.registry,
            "client": self.client,
            "result": self.result,
            "source": self.source,
            "peer": self.peer,
            "status": self.status,
            "bytes": self.bytes,
            "duration": self.duration,
        }


def client_of(request: Request) -> str:
    """Who asked: a peer (Spegel's loop guard), a measurement, else containerd."""
    if from_peer(request):  # the header, or its mark in a redirect's URL
        return PEER
    return MEASURE if _MEASURE_HEADER in request.headers else CONTAINERD


def _other_node(request: Request, response: Response, client: str, source: str) -> str:
    """The peer a response came from (its registry address), or went to (its host)."""
    if client == PEER:
        return request.client
    if source == "peer":
        return next((v for k, v in response.headers if k == PEER_HEADER), "")
    return ""


def result_of(request: Request, response: Response, sent: int, source: str) -> str:
    """How a blob or manifest request was answered (see RESULTS)."""
    status = response.status
    if 200 <= status < 300:
        if request.method != "HEAD" and sent < response.length:
            return FAILED
        return HIT if source == "peer" else LOCAL
    if status == 404 or response.mirrored:
        return MISS
    return ERROR


class ProviderSource(Protocol):
    def get_providers(self, key: str, limit: int = 20) -> AsyncIterator[Provider]: ...


class TimedProviders:
    """A provider source that records the time to the first provider of each lookup.

    That is what Spegel's `spegel_resolve_duration_seconds` measures; lookups that
    find nobody are counted apart, so they do not skew the histogram by the timeout.
    """

    def __init__(
        self,
        source: ProviderSource,
        telemetry: Telemetry,
        *,
        is_self: Callable[[Provider], bool] = lambda provider: False,
    ) -> None:
        self._source = source
        self._telemetry = telemetry
        self._is_self = is_self

    async def get_providers(self, key: str, limit: int = 20) -> AsyncIterator[Provider]:
        started = trio.current_time()
        found_one = False
        async with contextlib.aclosing(self._source.get_providers(key, limit)) as found:  # type: ignore[type-var]
            async for provider in found:
                self._telemetry.saw_provider(provider)
                if not found_one and not self._is_self(provider):
                    found_one = True
                    self._telemetry.resolved(trio.current_time() - started)
                yield provider
        if not found_one:
            self._telemetry.resolve_not_found.inc()


class _PeerSeries:
    """The per-peer series of one `peer` label value, each made when first used."""

    __slots__ = ("_failures", "_received", "_sent", "_telemetry", "label")

    def __init__(self, telemetry: Telemetry, label: str) -> None:
        self._telemetry = telemetry
        self.label = label
        self._sent: Any = None
        self._received: Any = None
        self._failures: dict[str, Any] = {}

    def sent(self, count: int) -> None:
        if self._sent is None:
            self._sent = self._telemetry.peer_sent_bytes.labels(self.label)
        self._sent.inc(count)

    def received(self, count: int) -> None:
        if self._received is None:
            self._received = self._telemetry.peer_received_bytes.labels(self.label)
        self._received.inc(count)

    def failed(self, reason: str) -> None:
        child = self._failures.get(reason)
        if child is None:
            child = self._failures[reason] = self._telemetry.peer_failures.labels(
                self.label, reason
            )
        child.inc()


class Telemetry:
    def __init__(
        self,
        *,
        relay_mode: str = "copy",
        feed_size: int = 512,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.feed: EventFeed[FeedEvent] = EventFeed(feed_size)
        self.transfers = Transfers(clock)
        self.relay_mode = relay_mode
        # Spegel's meaning: containerd's requests this node could not serve itself,
        # served through a peer (hit) or not (miss), and when the last hit ended.
        self.last_success: float | None = None
        self.mirror_counts = {"hit": 0, "miss": 0}
        # Every blob and manifest answer by (client, result), and body bytes to peers.
        self.results: collections.Counter[tuple[str, str]] = collections.Counter()
        self.bytes_to_peers = 0
        # Registry addresses of the peers met in DHT lookups: node id -> host:port.
        self.registry_addresses: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self._clock = clock
        r = self.registry
        prometheus_client.ProcessCollector(registry=r)
        Gauge(
            "mirror_build_info",
            "Always 1; the version of this node in its label.",
            ["version"],
            registry=r,
        ).labels(VERSION).set(1)
        self.loop_lag = Histogram(
            "mirror_event_loop_lag_seconds",
            "How late the event loop woke a 100 ms sleeper: what every request and DHT "
            "datagram waits behind whatever holds the loop.",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.mirror_requests = Counter(
            "spegel_mirror_requests_total",
            "Total number of mirror requests.",
            ["registry", "cache"],
            registry=r,
        )
        self.last_success_gauge = Gauge(
            "spegel_mirror_last_success_timestamp_seconds",
            "The timestamp of the last successful mirror request.",
            registry=r,
        )
        self.resolve_duration = Histogram(
            "spegel_resolve_duration_seconds",
            "The duration for router to resolve a peer.",
            ["router"],
            registry=r,
        )
        self.request_duration = Histogram(
            "http_request_duration_seconds",
            "The latency of the HTTP requests.",
            ["handler", "method", "code"],
            registry=r,
        )
        self.response_size = Histogram(
            "http_response_size_bytes",
            "The size of the HTTP responses.",
            ["handler", "method", "code"],
            buckets=RESPONSE_SIZE_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "http_requests_inflight",
            "The number of inflight requests being handled at the same time.",
            ["handler"],
            registry=r,
        )
        self.served_bytes = Counter(
            "mirror_served_bytes_total",
            "Body bytes sent on the registry port, by where they came from: "
            "local (this node's content store), peer (relayed from another node) or "
            "inflight (from a download this node's containerd is still making), and by "
            "who asked: containerd, peer or measure (Measure Image Pull).",
            ["source", "client"],
            registry=r,
        )
        self.registry_requests = Counter(
            "mirror_registry_requests_total",
            "Blob and manifest requests on the registry port, by who asked (containerd, "
            "peer, measure) and how they were answered: hit (a peer served it), local "
            "(this node served it), miss (404, or no peer could serve it), failed (the body "
            "was cut short), error.",
            ["client", "result"],
            registry=r,
        )
        self.upstream_bytes_avoided = Counter(
            "mirror_upstream_bytes_avoided_total",
            "Body bytes of blobs and manifests containerd received whole from peers "
            "through this node: bytes it would otherwise have fetched from the upstream.",
            registry=r,
        )
        self.peer_sent_bytes = Counter(
            "mirror_peer_sent_bytes_total",
            "Body bytes this node sent to each peer (by the peer's address; "
            f"{MAX_PEER_LABELS} peers, then other).",
            ["peer"],
            registry=r,
        )
        self.peer_received_bytes = Counter(
            "mirror_peer_received_bytes_total",
            "Body bytes this node received from each peer it asked (by the peer's host; "
            f"{MAX_PEER_LABELS} peers, then other).",
            ["peer"],
            registry=r,
        )
        self.peer_failures = Counter(
            "mirror_peer_failures_total",
            "Requests to a peer that failed, by why: unreachable, timeout (no head in time, "
            "a body stalled or too slow), answer (an unusable head), body (broke off), "
            "wrong_bytes (not the digest asked for). A busy answer is not counted.",
            ["peer", "reason"],
            registry=r,
        )
        self.peer_requests = Counter(
            "mirror_peer_requests_total",
            "Local misses handed to the peer mirror, by kind and outcome (peer, miss, failed).",
            ["kind", "outcome"],
            registry=r,
        )
        self.relayed_bodies = Counter(
            "mirror_relay_bodies_total",
            "Blob bodies relayed from a peer, by relay mode (splice or copy) and outcome.",
            ["mode", "outcome"],
            registry=r,
        )
        self.striped_bodies = Counter(
            "mirror_striped_bodies_total",
            "Blob bodies fetched in ranges from several complete holders at once, by outcome "
            "(peer: whole and proven, failed).",
            ["outcome"],
            registry=r,
        )
        self.relay_resumes = Counter(
            "mirror_relay_resumes_total",
            "Relayed bodies resumed from another peer with Range after a peer failed mid-body.",
            registry=r,
        )
        self.peer_time_to_head = Histogram(
            "mirror_peer_time_to_head_seconds",
            "Time from a local miss to the head of the peer's answer.",
            registry=r,
        )
        self.resolve_not_found = Counter(
            "mirror_resolve_not_found_total",
            "DHT provider lookups that found no peer.",
            registry=r,
        )
        self.coldstart_claims = Counter(
            "mirror_coldstart_claims_total",
            "Blob misses no peer could serve, by how the claim decided them: won (this node "
            "fetched from the upstream for the cluster), lost (streamed from the claimant "
            "instead), refused or timeout (fetched from the upstream, as without a mirror), "
            "distrusted (the claimant had served wrong bytes of it: the upstream serves it).",
            ["outcome"],
            registry=r,
        )
        self.upstream_avoided = Counter(
            "mirror_coldstart_upstream_fetches_avoided_total",
            "Blobs nobody held that this node streamed whole from the node fetching them, "
            "where it would otherwise have fetched them from the upstream.",
            registry=r,
        )
        self.inflight_relayed = Counter(
            "mirror_inflight_relayed_bodies_total",
            "Bodies relayed from a peer's download in progress, by outcome (peer, failed).",
            ["outcome"],
            registry=r,
        )
        self.digest_mismatches = Counter(
            "mirror_relay_digest_mismatch_total",
            "Relayed bodies whose bytes did not hash to the digest asked for; the client "
            "connection was reset before the end.",
            registry=r,
        )
        self.tag_disagreements = Counter(
            "mirror_tag_disagreements_total",
            "Answers of providers asked for a tag that named another digest than the one "
            "most of them named (the one served).",
            registry=r,
        )
        self._resolve = self.resolve_duration.labels(ROUTER_LABEL)
        self._inflight: dict[str, Any] = {}
        self._per_response: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._mirror_requests: dict[tuple[str, str], Any] = {}
        self._served = {
            (source, client): self.served_bytes.labels(source, client)
            for source in _SOURCES
            for client in CLIENTS
        }
        self._results = {
            (client, result): self.registry_requests.labels(client, result)
            for client in CLIENTS
            for result in RESULTS
        }
        self._peers: dict[str, _PeerSeries] = {}

    # -- the hot path --------------------------------------------------------

    def instrument(self, handler: Handler) -> Handler:
        """Wrap the registry handler so the in-flight gauge counts requests being answered,
        and a large body is listed among the transfers in progress while it is sent.

        The gauge goes up here and down in `observe`, which runs once the body is
        sent; a cancelled handler never reaches `observe`, so it comes down here.
        """

        async def instrumented(request: Request) -> Response:
            gauge = self._inflight_gauge(handler_label(request.path))
            gauge.inc()
            try:
                response = await handler(request)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    gauge.dec()
                raise
            body = response.body
            if not isinstance(body, bytes) and body.length >= TRACK_FROM:
                response.body = self._tracked(request, response, body)
            return response

        return instrumented

    def _tracked(self, request: Request, response: Response, body: Body) -> Body:
        client = client_of(request)
        source = response.source or "local"
        transfer = Transfer(
            self.transfers.next_id(),
            response.handler,
            request.path,
            request.query_param("ns") or "",
            client,
            source,
            _other_node(request, response, client, source),
            body.length,
        )
        return self.transfers.track(body, transfer)

    def observe(self, request: Request, response: Response, sent: int, seconds: float) -> None:
        """`RegistryServer`'s observer: called once per response, after its body."""
        self._inflight_gauge(handler_label(request.path)).dec()
        method = request.method if request.method in _METHODS else "other"
        status = response.status
        handler = response.handler
        key = (handler, method, status)
        children = self._per_response.get(key)
        if children is None:
            labels = (handler, method, str(status))
            children = (
                self.request_duration.labels(*labels),
                self.response_size.labels(*labels),
            )
            self._per_response[key] = children
        children[0].observe(seconds)
        children[1].observe(sent)
        if handler not in _CONTENT:
            return  # health, errors before any lookup, /v2/
        source = response.source
        if not source and 200 <= status < 300:
            source = "local"  # the registry handler marks only what a peer served
        client = client_of(request)
        if sent and source:
            self._served[source, client].inc(sent)
            if client == PEER:
                self.bytes_to_peers += sent
                self._peer(request.client).sent(sent)
        result = result_of(request, response, sent, source)
        self.results[client, result] += 1
        self._results[client, result].inc()
        registry = request.query_param("ns") or ""
        if client == CONTAINERD:
            if result == HIT and sent:
                self.upstream_bytes_avoided.inc(sent)
            if response.mirrored:
                self._mirror_request(registry, result == HIT)
        self.feed.publish(
            FeedEvent(
                self._clock(),
                handler,
                method,
                request.path,
                registry,
                client,
                result,
                source,
                _other_node(request, response, client, source),
                status,
                sent,
                seconds,
            )
        )

    def _mirror_request(self, registry: str, hit: bool) -> None:
        """Spegel's count: a local miss of containerd's, served by a peer or not."""
        cache = "hit" if hit else "miss"
        self.mirror_counts[cache] += 1
        self._mirror_counter(registry, cache).inc()
        if hit:
            now = self._clock()
            self.last_success = now
            self.last_success_gauge.set(now)

    # -- per peer ----------------------------------------------------------------

    def peer_received(self, host: str, count: int) -> None:
        """`PeerMirror`'s ledger: body bytes a peer sent this node."""
        self._peer(host).received(count)

    def peer_failed(self, host: str, reason: str) -> None:
        """`PeerMirror`'s ledger: one request to a peer that failed, and why."""
        self._peer(host).failed(reason)

    def saw_provider(self, provider: Provider) -> None:
        """A DHT lookup named `provider`: remember its registry address (for the page)."""
        addresses = self.registry_addresses
        addresses[provider.node_id] = f"{provider.host}:{provider.registry_port}"
        addresses.move_to_end(provider.node_id)
        if len(addresses) > MAX_KNOWN_ADDRESSES:
            addresses.popitem(last=False)

    def _peer(self, host: str) -> _PeerSeries:
        series = self._peers.get(host)
        if series is not None:
            return series
        if len(self._peers) >= MAX_PEER_LABELS:
            other = self._peers.get(OTHER)
            if other is None:
                other = self._peers[OTHER] = _PeerSeries(self, OTHER)
            return other
        series = self._peers[host] = _PeerSeries(self, host or "unknown")
        return series

    def summary(self) -> dict[str, Any]:
        """The page's cards: sent with each batch of the live feed and in the stats."""
        results = self.results
        return {
            "hit": self.mirror_counts["hit"],
            "miss": self.mirror_counts["miss"],
            "local": results[CONTAINERD, LOCAL],
            "served": results[PEER, LOCAL],
            "bytes_to_peers": self.bytes_to_peers,
            "measure": sum(results[MEASURE, result] for result in RESULTS),
            "last_success": self.last_success,
        }

    def on_mirror_event(self, event: MirrorEvent) -> None:
        """`PeerMirror`'s callback: one per local miss handed to the peers."""
        self.peer_requests.labels(event.kind, event.outcome).inc()
        if event.claim:
            self.coldstart_claims.labels(event.claim).inc()
        if event.outcome == "miss":
            return
        if event.claim == "lost" and event.outcome == "peer" and event.method == "GET":
            self.upstream_avoided.inc()
        if event.inflight_source and event.method == "GET":
            self.inflight_relayed.labels(event.outcome).inc()
        if event.digest_mismatch:
            self.digest_mismatches.inc()
        if event.tag_disagreements:
            self.tag_disagreements.inc(event.tag_disagreements)
        self.peer_time_to_head.observe(event.time_to_head)
        if event.kind == "blob" and event.method == "GET":
            self.relayed_bodies.labels(self.relay_mode, event.outcome).inc()
        if event.striped:
            self.striped_bodies.labels(event.outcome).inc()
        if event.resumes:
            self.relay_resumes.inc(event.resumes)

    def resolved(self, seconds: float) -> None:
        self._resolve.observe(seconds)

    # -- helpers ---------------------------------------------------------------

    def _inflight_gauge(self, label: str) -> Any:
        gauge = self._inflight.get(label)
        if gauge is None:
            gauge = self._inflight[label] = self.inflight.labels(label)
        return gauge

    def _mirror_counter(self, registry: str, cache: str) -> Any:
        key = (registry, cache)
        counter = self._mirror_requests.get(key)
        if counter is None:
            if len(self._mirror_requests) >= MAX_REGISTRY_LABELS:
                key = ("other", cache)
                registry = "other"
                counter = self._mirror_requests.get(key)
                if counter is not None:
                    return counter
            counter = self._mirror_requests[key] = self.mirror_requests.labels(registry, cache)
        return counter

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return prometheus_client.generate_latest(self.registry)
