"""A local miss, served through a peer: resolve, race, relay, resume.

Providers come from the DHT as they are found. The first is tried as soon as it
is known; if it has not answered its head within the hedge delay (a percentile
of recent head latencies), the next one starts too, and the first head wins.
`--mirror-resolve-timeout` bounds how long we wait for a provider while nothing
is in flight; `--mirror-resolve-retries` bounds the attempts. Manifests and HEAD
requests get a total budget; blob bodies only a stall timeout, and a peer that
breaks mid-body is replaced through `Range` (see relay.py).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

import trio

from dht import Provider
from mirror.mirroring.peer import PeerError, PeerResponse, request_head
from mirror.mirroring.providers import ProviderCache
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


Validator = Callable[[PeerResponse], None]


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

    async def fetch(
        self, request: Request, route: DistributionPath, registry: str | None
    ) -> Response | None:
        if route.digest is not None:
            key = str(route.digest)
        elif registry is not None:
            key = f"{registry}/{route.name}:{route.tag}"
        else:
            return None
        section = "manifests" if route.kind is Kind.MANIFEST else "blobs"
        target = f"/v2/{route.name}/{section}/{route.reference}"
        if registry is not None:
            target += f"?ns={registry}"
        headers = [(MIRRORED_HEADER, "true")]
        client_range = request.headers.get("range")
        if client_range is not None:
            headers.append(("Range", client_range))
        kind = "manifest" if route.kind is Kind.MANIFEST else "blob"
        started = trio.current_time()

        def validate(peer: PeerResponse) -> None:
            if peer.status not in (200, 206):
                raise PeerError(f"peer answered {peer.status}")
            if peer.status == 206 and client_range is None:
                raise PeerError("peer sent a partial answer to a whole request")
            served = peer.header("docker-content-digest")
            if route.digest is not None and served not in (None, str(route.digest)):
                raise PeerError(f"peer served digest {served}, not {route.digest}")

        bounded = route.kind is Kind.MANIFEST or request.method == "HEAD"
        budget = self.settings.manifest_budget if bounded else math.inf
        with trio.move_on_after(budget):
            found = await self._race(
                self.cache.providers(key), request.method, target, headers, validate
            )
        if found is None:
            self._emit(
                MirrorEvent(
                    kind,
                    request.method,
                    key,
                    registry or "",
                    "miss",
                    "",
                    404,
                    0,
                    trio.current_time() - started,
                )
            )
            return None
        provider, peer = found
        time_to_head = trio.current_time() - started
        peer_name = f"{provider.host}:{provider.registry_port}"
        response_headers = [
            ("Content-Type", peer.header("content-type") or BLOB_CONTENT_TYPE),
            ("Docker-Content-Digest", peer.header("docker-content-digest") or key),
            API_VERSION_HEADER,
            ("Accept-Ranges", "bytes"),
            (PEER_HEADER, peer_name),
        ]
        content_range = peer.header("content-range")
        if peer.status == 206 and content_range:
            response_headers.append(("Content-Range", content_range))

        def finished(outcome: Literal["peer", "failed"], sent: int, resumes: int = 0) -> None:
            self._emit(
                MirrorEvent(
                    kind,
                    request.method,
                    key,
                    registry or "",
                    outcome,
                    peer_name,
                    peer.status,
                    sent,
                    trio.current_time() - started,
                    resumes,
                    time_to_head,
                )
            )

        served_digest = peer.header("docker-content-digest")
        if route.kind is Kind.MANIFEST and route.digest is None and served_digest:
            # containerd asks for the manifest by this digest next.
            self.cache.hint(served_digest, provider)
        if request.method == "HEAD":
            peer.close()
            finished("peer", 0)
            return Response(
                peer.status,
                response_headers,
                b"",
                handler=kind,
                source="peer",
                declared_length=peer.content_length,
            )
        if route.kind is Kind.MANIFEST:
            try:
                with trio.fail_after(max(budget - time_to_head, 0.001)):
                    body = await _read_small_body(peer)
            except (PeerError, PeerStalled, OSError, trio.TooSlowError) as exc:
                log.warning(
                    "peer failed mid-manifest", extra={"peer": peer_name, "error": str(exc)}
                )
                finished("failed", 0)
                return None
            finally:
                peer.close()
            finished("peer", len(body))
            document = parse_manifest(body) if peer.status == 200 else None
            # The peer that holds a manifest almost surely holds what it names: the
            # requests for those follow at once and need not wait for the DHT.
            for child in referenced_digests(document) if document else ():
                self.cache.hint(child, provider)
            return Response(peer.status, response_headers, body, handler=kind, source="peer")
        start = _range_start(content_range) if peer.status == 206 else 0

        async def resume(offset: int) -> PeerResponse:
            return await self._resume(key, target, offset, start + peer.content_length - 1)

        def relay_done(stats: RelayStats) -> None:
            complete = stats.bytes_relayed == peer.content_length
            finished("peer" if complete else "failed", stats.bytes_relayed, stats.resumes)

        body_stream = RelayBody(
            peer,
            peer.content_length,
            start,
            resume=resume,
            max_resumes=self.settings.max_resumes,
            stall_timeout=self.settings.stall_timeout,
            use_splice=self.settings.use_splice,
            on_done=relay_done,
        )
        return Response(peer.status, response_headers, body_stream, handler=kind, source="peer")

    async def _resume(self, key: str, target: str, offset: int, end: int) -> PeerResponse:
        def validate(peer: PeerResponse) -> None:
            if peer.status != 206 or _range_start(peer.header("content-range")) != offset:
                raise PeerError(f"peer cannot resume at {offset} (status {peer.status})")

        headers = [(MIRRORED_HEADER, "true"), ("Range", f"bytes={offset}-{end}")]
        found = await self._race(self.cache.providers(key), "GET", target, headers, validate)
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
        self,
        providers: AsyncIterator[Provider],
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        validate: Validator,
    ) -> tuple[Provider, PeerResponse] | None:
        settings = self.settings
        winner: tuple[Provider, PeerResponse] | None = None
        send, receive = trio.open_memory_channel[tuple[str, object]](math.inf)

        async def pump() -> None:
            async for provider in providers:
                send.send_nowait(("provider", provider))
            send.send_nowait(("exhausted", None))

        async def attempt(provider: Provider, nursery: trio.Nursery) -> None:
            nonlocal winner
            began = trio.current_time()
            try:
                with trio.fail_after(settings.head_timeout):
                    peer = await request_head(
                        provider.host, provider.registry_port, method, target, headers
                    )
            except (PeerError, OSError, trio.TooSlowError) as exc:
                send.send_nowait(("failed", (provider, exc)))
                return
            try:
                validate(peer)
            except PeerError as exc:
                peer.close()
                send.send_nowait(("failed", (provider, exc)))
                return
            if winner is not None:
                peer.close()
                return
            self.latencies.add(trio.current_time() - began)
            winner = (provider, peer)
            nursery.cancel_scope.cancel()

        pending: deque[Provider] = deque()
        attempts = in_flight = 0
        exhausted = False
        idle_since = trio.current_time()
        hedge_at = math.inf
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            while True:
                now = trio.current_time()
                if (
                    pending
                    and attempts < settings.resolve_retries
                    and (in_flight == 0 or now >= hedge_at)
                ):
                    nursery.start_soon(attempt, pending.popleft(), nursery)
                    attempts += 1
                    in_flight += 1
                    hedge_at = now + self.latencies.hedge_delay()
                    continue
                out_of_options = attempts >= settings.resolve_retries or (exhausted and not pending)
                if in_flight == 0 and out_of_options:
                    break
                if in_flight == 0:
                    wake_at = idle_since + settings.resolve_timeout
                elif pending and attempts < settings.resolve_retries:
                    wake_at = hedge_at
                else:
                    wake_at = math.inf
                with trio.move_on_at(wake_at) as waited:
                    what, value = await receive.receive()
                if waited.cancelled_caught:
                    if in_flight == 0:
                        break  # No provider within the resolve timeout.
                    continue
                if what == "provider":
                    pending.append(value)  # type: ignore[arg-type]
                elif what == "exhausted":
                    exhausted = True
                else:
                    in_flight -= 1
                    if in_flight == 0:
                        idle_since = trio.current_time()
                    provider, exc = value  # type: ignore[misc]
                    log.debug(
                        "peer attempt failed",
                        extra={
                            "peer": f"{provider.host}:{provider.registry_port}",
                            "error": str(exc),
                        },
                    )
            nursery.cancel_scope.cancel()
        return winner


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
