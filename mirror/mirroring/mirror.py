"""A local miss, served through a peer: resolve, race, relay, resume.

`fetch` plans the request, races the providers for a response head, then takes
one of three paths: HEAD (the head alone), a manifest (read whole within what is
left of the budget, then hints the peer for what it names), or a blob (relayed,
and resumed through `Range` from another provider when the peer breaks mid-body;
see relay.py). Nobody able to serve is `None`: a fast 404.

The race's rules live in race.py (pure) and its Trio shell in racer.py: providers
come from the DHT as they are found; the first is tried as soon as it is known; if
it has not answered its head within the hedge delay (a percentile of recent head
latencies, kept here), the next one starts too, and the first head wins.
`--mirror-resolve-timeout` bounds how long we wait for a provider while nothing
is in flight; `--mirror-resolve-retries` bounds the attempts. Manifests and HEAD
requests get a total budget; blob bodies only a stall timeout.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import trio

from dht import Provider
from mirror.mirroring.peer import PeerError, PeerResponse
from mirror.mirroring.providers import ProviderCache
from mirror.mirroring.race import Race, RaceLimits
from mirror.mirroring.racer import HeadRequest, RaceShell
from mirror.mirroring.relay import RelayBody, RelayStats
from mirror.oci.distribution import DistributionPath, Kind
from mirror.oci.mediatypes import (
    BLOB_CONTENT_TYPE,
    MAX_MANIFEST_SIZE,
    parse_manifest,
    referenced_digests,
)
from mirror.server.http import API_VERSION_HEADER
from mirror.server.io import PeerStalled
from mirror.server.registry import MIRRORED_HEADER
from mirror.server.request import Request
from mirror.server.response import Response

log = logging.getLogger("mirror.mirroring")

# Tells the client (and an operator with curl) which peer served a mirrored response.
PEER_HEADER = "X-Mirror-Peer"


@dataclass(frozen=True)
class MirrorSettings:
    resolve_timeout: float = 0.020
    resolve_retries: int = 3
    manifest_budget: float = 5.0
    head_timeout: float = 5.0
    stall_timeout: float = 10.0
    max_resumes: int = 3
    use_splice: bool = False


@dataclass(frozen=True)
class MirrorEvent:
    """One mirrored request, for metrics and the debug page's live feed."""

    kind: str  # "manifest" | "blob"
    method: str
    key: str
    registry: str
    outcome: Literal["peer", "miss", "failed"]
    peer: str
    status: int
    bytes: int
    duration: float
    resumes: int = 0
    time_to_head: float = 0.0


class HeadLatencies:
    """Recent peer head latencies; the hedge delay is a high percentile of them."""

    def __init__(self, size: int = 128, default: float = 0.1) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._default = default

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def hedge_delay(self, percentile: float = 0.9) -> float:
        if len(self._samples) < 8:
            return self._default
        ordered = sorted(self._samples)
        value = ordered[min(len(ordered) - 1, math.ceil(percentile * len(ordered)) - 1)]
        return min(max(value * 1.5, 0.01), 1.0)


@dataclass(frozen=True, slots=True)
class _Miss:
    """One request on its way to a peer: what to ask for, and how to report it."""

    method: str
    kind: Literal["manifest", "blob"]
    key: str
    registry: str
    target: str
    digest: str | None  # None: a manifest by tag
    client_range: str | None
    started: float

    @property
    def bounded(self) -> bool:
        """Manifests and HEAD get a total budget; blob bodies only a stall timeout."""
        return self.kind == "manifest" or self.method == "HEAD"

    def request_headers(self) -> list[tuple[str, str]]:
        headers = [(MIRRORED_HEADER, "true")]
        if self.client_range is not None:
            headers.append(("Range", self.client_range))
        return headers

    def validate(self, peer: PeerResponse) -> None:
        if peer.status not in (200, 206):
            raise PeerError(f"peer answered {peer.status}")
        if peer.status == 206 and self.client_range is None:
            raise PeerError("peer sent a partial answer to a whole request")
        served = peer.header("docker-content-digest")
        if self.digest is not None and served not in (None, self.digest):
            raise PeerError(f"peer served digest {served}, not {self.digest}")


def _plan(
    request: Request, route: DistributionPath, registry: str | None, now: float
) -> _Miss | None:
    if route.digest is not None:
        key = str(route.digest)
    elif registry is not None:
        key = f"{registry}/{route.name}:{route.tag}"
    else:
        return None
    manifest = route.kind is Kind.MANIFEST
    target = f"/v2/{route.name}/{'manifests' if manifest else 'blobs'}/{route.reference}"
    if registry is not None:
        target += f"?ns={registry}"
    return _Miss(
        method=request.method,
        kind="manifest" if manifest else "blob",
        key=key,
        registry=registry or "",
        target=target,
        digest=None if route.digest is None else str(route.digest),
        client_range=request.headers.get("range"),
        started=now,
    )


@dataclass(frozen=True, slots=True)
class _Served:
    """The peer that won the race for a `_Miss`, and its response head."""

    provider: Provider
    peer: PeerResponse
    time_to_head: float

    @property
    def name(self) -> str:
        return f"{self.provider.host}:{self.provider.registry_port}"

    def response_headers(self, key: str) -> list[tuple[str, str]]:
        peer = self.peer
        headers = [
            ("Content-Type", peer.header("content-type") or BLOB_CONTENT_TYPE),
            ("Docker-Content-Digest", peer.header("docker-content-digest") or key),
            API_VERSION_HEADER,
            ("Accept-Ranges", "bytes"),
            (PEER_HEADER, self.name),
        ]
        content_range = peer.header("content-range")
        if peer.status == 206 and content_range:
            headers.append(("Content-Range", content_range))
        return headers


class PeerMirror:
    def __init__(
        self,
        cache: ProviderCache,
        settings: MirrorSettings | None = None,
        *,
        on_event: Callable[[MirrorEvent], None] | None = None,
    ) -> None:
        self.cache = cache
        self.settings = settings or MirrorSettings()
        self.latencies = HeadLatencies()
        self._on_event = on_event

    def _emit(self, event: MirrorEvent) -> None:
        fields = {
            "key": event.key,
            "method": event.method,
            "outcome": event.outcome,
            "peer": event.peer,
            "bytes": event.bytes,
            "duration_ms": round(event.duration * 1000, 2),
            "resumes": event.resumes,
        }
        log.log(
            logging.DEBUG if event.outcome == "miss" else logging.INFO, "mirrored", extra=fields
        )
        if self._on_event is not None:
            self._on_event(event)

    def _finished(
        self,
        miss: _Miss,
        served: _Served,
        outcome: Literal["peer", "failed"],
        sent: int,
        resumes: int = 0,
    ) -> None:
        self._emit(
            MirrorEvent(
                miss.kind,
                miss.method,
                miss.key,
                miss.registry,
                outcome,
                served.name,
                served.peer.status,
                sent,
                trio.current_time() - miss.started,
                resumes,
                served.time_to_head,
            )
        )

    async def fetch(
        self, request: Request, route: DistributionPath, registry: str | None
    ) -> Response | None:
        miss = _plan(request, route, registry, trio.current_time())
        if miss is None:
            return None
        budget = self.settings.manifest_budget if miss.bounded else math.inf
        head = HeadRequest(miss.method, miss.target, miss.request_headers(), miss.validate)
        found = await self._race(miss.key, head, budget)
        if found is None:
            duration = trio.current_time() - miss.started
            self._emit(
                MirrorEvent(
                    miss.kind, miss.method, miss.key, miss.registry, "miss", "", 404, 0, duration
                )
            )
            return None
        served = _Served(found[0], found[1], trio.current_time() - miss.started)
        served_digest = served.peer.header("docker-content-digest")
        if miss.kind == "manifest" and miss.digest is None and served_digest:
            # containerd asks for the manifest by this digest next.
            self.cache.hint(served_digest, served.provider)
        if miss.method == "HEAD":
            return self._head(miss, served)
        if miss.kind == "manifest":
            return await self._manifest(miss, served, budget)
        return self._blob(miss, served)

    def _head(self, miss: _Miss, served: _Served) -> Response:
        served.peer.close()
        self._finished(miss, served, "peer", 0)
        return Response(
            served.peer.status,
            served.response_headers(miss.key),
            b"",
            handler=miss.kind,
            source="peer",
            declared_length=served.peer.content_length,
        )

    async def _manifest(self, miss: _Miss, served: _Served, budget: float) -> Response | None:
        peer = served.peer
        try:
            with trio.fail_after(max(budget - served.time_to_head, 0.001)):
                body = await _read_small_body(peer)
        except (PeerError, PeerStalled, OSError, trio.TooSlowError) as exc:
            log.warning("peer failed mid-manifest", extra={"peer": served.name, "error": str(exc)})
            self._finished(miss, served, "failed", 0)
            return None
        finally:
            peer.close()
        self._finished(miss, served, "peer", len(body))
        document = parse_manifest(body) if peer.status == 200 else None
        # The peer that holds a manifest almost surely holds what it names: the
        # requests for those follow at once and need not wait for the DHT.
        for child in referenced_digests(document) if document else ():
            self.cache.hint(child, served.provider)
        return Response(
            peer.status, served.response_headers(miss.key), body, handler=miss.kind, source="peer"
        )

    def _blob(self, miss: _Miss, served: _Served) -> Response:
        peer = served.peer
        start = _range_start(peer.header("content-range")) if peer.status == 206 else 0
        end = start + peer.content_length - 1

        async def resume(offset: int) -> PeerResponse:
            return await self._resume(miss.key, miss.target, offset, end)

        def relay_done(stats: RelayStats) -> None:
            complete = stats.bytes_relayed == peer.content_length
            self._finished(
                miss, served, "peer" if complete else "failed", stats.bytes_relayed, stats.resumes
            )

        body = RelayBody(
            peer,
            peer.content_length,
            start,
            resume=resume,
            max_resumes=self.settings.max_resumes,
            stall_timeout=self.settings.stall_timeout,
            use_splice=self.settings.use_splice,
            on_done=relay_done,
        )
        return Response(
            peer.status, served.response_headers(miss.key), body, handler=miss.kind, source="peer"
        )

    async def _resume(self, key: str, target: str, offset: int, end: int) -> PeerResponse:
        def validate(peer: PeerResponse) -> None:
            if peer.status != 206 or _range_start(peer.header("content-range")) != offset:
                raise PeerError(f"peer cannot resume at {offset} (status {peer.status})")

        headers = [(MIRRORED_HEADER, "true"), ("Range", f"bytes={offset}-{end}")]
        found = await self._race(key, HeadRequest("GET", target, headers, validate), math.inf)
        if found is None:
            raise PeerError(f"no provider could resume {key} at byte {offset}")
        log.info(
            "resumed from another peer",
            extra={
                "key": key,
                "offset": offset,
                "peer": f"{found[0].host}:{found[0].registry_port}",
            },
        )
        return found[1]

    async def _race(
        self, key: str, head: HeadRequest, budget: float
    ) -> tuple[Provider, PeerResponse] | None:
        settings = self.settings
        limits = RaceLimits(
            resolve_timeout=settings.resolve_timeout,
            resolve_retries=settings.resolve_retries,
            hedge_delay=self.latencies.hedge_delay(),
            head_timeout=settings.head_timeout,
            budget=budget,
        )
        race = Race[Provider](limits, trio.current_time())
        done, peer = await RaceShell(race, self.cache.providers(key), head).run()
        if done.winner is None or peer is None:
            log.debug("no peer answered", extra={"key": key, "reason": done.reason})
            return None
        self.latencies.add(done.head_latency)
        return done.winner, peer


async def _read_small_body(peer: PeerResponse) -> bytes:
    if peer.content_length > MAX_MANIFEST_SIZE:
        raise PeerError("manifest too large")
    body = bytearray(peer.early_body[: peer.content_length])
    while len(body) < peer.content_length:
        data = await peer.sock.recv(min(65536, peer.content_length - len(body)))
        if not data:
            raise PeerError("peer closed mid-manifest")
        body += data
    return bytes(body)


def _range_start(content_range: str | None) -> int:
    """`bytes 100-199/1000` -> 100; -1 when absent or malformed."""
    if not content_range or not content_range.startswith("bytes "):
        return -1
    first = content_range[6:].split("-", 1)[0]
    return int(first) if first.isdigit() else -1
