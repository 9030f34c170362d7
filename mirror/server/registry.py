"""The registry API on the hot path: `/v2/` pulls, `/readyz`, `/livez`.

`_route` alone decides what a request gets: a ready answer (a whole manifest
already served for this exact target, health, errors) or a pull to look up.

Local content is served straight from containerd's content store; a miss goes
to the mirroring layer when one is wired in (and the request did not come from
a peer), else it is a fast 404 so that containerd falls back to the next host.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from mirror.basicauth import CHALLENGE, BasicAuth
from mirror.oci.distribution import (
    DistributionPath,
    Kind,
    PathError,
    parse_distribution_path,
    valid_registry,
)
from mirror.oci.filters import ReferenceFilter
from mirror.oci.mediatypes import BLOB_CONTENT_TYPE
from mirror.oci.ranges import Unsatisfiable, parse_range, parse_ranges
from mirror.server.http import API_VERSION_HEADER, JSON_TYPE
from mirror.server.localstore import MANIFEST_CACHE_BYTES, LocalStore, Lru
from mirror.server.pacing import Pacer
from mirror.server.proofs import BlobProofs
from mirror.server.request import Request
from mirror.server.response import (
    Body,
    FileBody,
    MultipartFileBody,
    Response,
    blob_headers,
    error_response,
    multipart_body,
    range_not_satisfiable,
    unavailable,
)
from mirror.server.streamcap import StreamCap

# Spegel's loop-prevention header: a request carrying it is served from local content only.
MIRRORED_HEADER = "x-spegel-mirrored"
# The same mark in a URL: a redirect (--mirror-relay=redirect) cannot carry a header.
MIRRORED_QUERY = "mirrored"
# A striped fetch's range asked of a holder other than its first: served from spare
# uplink only, so busy while this node streams anything else to a peer. Every
# stream a stripe takes is one another puller cannot (`python -m bench
# coldstart-sim`, 1,000 nodes at once: p50 17.2 s with one source per layer, 27.4 s
# striping over busy holders, 17.2 s over idle ones only; each node fetching the
# layers in its own order, as the model then had it).
STRIPE_HEADER = "x-mirror-stripe"
# A peer that will pass the blob it asks for on to others (mirror/mirroring/forwarding.py):
# a full node ends a stream to a peer that will not to make room for it.
FORWARDS_HEADER = "x-mirror-forwards"


def from_peer(request: Request) -> bool:
    """A peer asked (it serves only its own content to it: requests never loop)."""
    return MIRRORED_HEADER in request.headers or request.query_param(MIRRORED_QUERY) == "true"


_TEXT = [("Content-Type", "text/plain; charset=utf-8")]
# The kubelet's probes: never behind basic auth (Spegel's rule too).
_PROBES = frozenset(("/livez", "/readyz", "/healthz"))
_STATUS_FOR_CODE = {"UNSUPPORTED": 404}


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A whole-manifest answer kept ready, valid until `expires` and for one tag generation."""

    headers: list[tuple[str, str]]
    body: bytes
    expires: float
    generation: int


@dataclass(frozen=True, slots=True)
class _Pull:
    """Content to look up: a parsed manifest or blob path and its registry, if named."""

    route: DistributionPath
    registry: str | None


class MissHandler(Protocol):
    async def fetch(
        self, request: Request, path: DistributionPath, registry: str | None
    ) -> Response | None: ...


class InflightSource(Protocol):
    async def response(self, request: Request, digest: str) -> Response | None: ...


class RegistryHandler:
    def __init__(
        self,
        store: LocalStore,
        reference_filter: ReferenceFilter | None = None,
        *,
        ready: Callable[[], bool] = lambda: True,
        miss: MissHandler | None = None,
        on_local_miss: Callable[[str], None] | None = None,
        inflight: InflightSource | None = None,
        stream_cap: StreamCap | None = None,
        peer_pacer: Pacer | None = None,
        proofs: BlobProofs | None = None,
        auth: BasicAuth | None = None,
        forwards: Callable[[str], bool] | None = None,
    ) -> None:
        # Basic auth (the chart's basicAuthSecretName): every request but the probes.
        self.auth = auth
        # Local blobs hashed once before a peer is sent them (proofs.py).
        self.proofs = proofs if proofs is not None else BlobProofs()
        # One upload budget for every blob body sent to a peer (--peer-upload-rate).
        self.peer_pacer = peer_pacer
        self.store = store
        # Blobs this node's containerd is still downloading, served to peers as they grow.
        self.inflight = inflight
        # Bounds how many bodies this node streams to peers at once (--peer-streams).
        self.stream_cap = stream_cap
        # Whether this node passes a download in progress on to peers (forwarding.py):
        # one it does not is answered busy, as if this node had no room.
        self.forwards = forwards
        # Told of every key this node could not serve from its own store (it may be
        # advertising it still: containerd's GC removes content without an event).
        self.on_local_miss = on_local_miss
        self.filter = reference_filter or ReferenceFilter()
        # Keyed by the raw request target: a repeated manifest request skips parsing,
        # filtering and lookups. The bodies are the manifest cache's own bytes.
        self._prepared: Lru[str, _Prepared] = Lru(
            1024, max_weight=MANIFEST_CACHE_BYTES, weigh=lambda p: len(p.body)
        )
        self.ready = ready
        self.miss = miss

    async def __call__(self, request: Request) -> Response:
        decision = self._route(request)
        if isinstance(decision, Response):
            return decision
        return await self._pull(request, decision)

    def _route(self, request: Request) -> Response | _Pull:
        """The one place that decides what a request gets: an answer, or a pull to look up.

        A whole-manifest answer already given for this exact target is given again
        while it is valid, before any parsing: that doubles manifest requests/s.
        Only credentials come first, checked with one comparison.
        """
        auth = self.auth
        if (
            auth is not None
            and not auth.allows(request.headers.get("authorization"))
            and request.path not in _PROBES
        ):
            return _unauthorized()
        if request.method in ("GET", "HEAD") and "range" not in request.headers:
            prepared = self._prepared.get(request.target)
            if (
                prepared is not None
                and prepared.generation == self.store.generation
                and prepared.expires > trio.current_time()
            ):
                return Response(
                    200, prepared.headers, prepared.body, handler="manifest", source="local"
                )
        if request.method == "CONNECT":
            return _not_allowed("not a proxy", close=True)
        path = request.path
        if path == "/livez":
            return Response(200, list(_TEXT), b"ok\n", handler="livez")
        if path in ("/readyz", "/healthz"):
            if self.ready():
                return Response(200, list(_TEXT), b"ok\n", handler="readyz")
            return Response(503, list(_TEXT), b"not ready\n", handler="readyz")
        return self._route_distribution(request, path)

    def _route_distribution(self, request: Request, path: str) -> Response | _Pull:
        if request.method not in ("GET", "HEAD") and (path == "/v2" or path.startswith("/v2/")):
            # Before the path: a push (`POST /v2/<name>/blobs/uploads/`) is refused as a
            # method this read-only registry does not allow, not as a bad path.
            return _not_allowed("only GET and HEAD are served")
        try:
            route = parse_distribution_path(path)
        except PathError as exc:
            status = _STATUS_FOR_CODE.get(exc.code, 400)
            return error_response(status, exc.code, exc.message)
        if route is None:
            return Response(404, list(_TEXT), b"not found\n")
        if route.kind is Kind.BASE:
            return Response(
                200, [("Content-Type", JSON_TYPE), API_VERSION_HEADER], b"{}", handler="v2"
            )
        registry = request.query_param("ns")
        if registry is not None and not valid_registry(registry):
            return error_response(400, "NAME_INVALID", "invalid ns parameter")
        if registry is not None:
            separator = ":" if route.tag is not None else "@"
            reference = f"{registry}/{route.name}{separator}{route.reference}"
            if not self.filter.allows(reference, registry):
                return self._unknown(route, "filtered")
        return _Pull(route, registry)

    async def _pull(self, request: Request, pull: _Pull) -> Response:
        """Local content first; then the mirroring layer, unless a peer asked."""
        route, registry = pull.route, pull.registry
        peer = from_peer(request)
        response: Response | None
        if route.kind is Kind.MANIFEST:
            response = await self._local_manifest(request, route, registry)
        else:
            response = await self._blob(request, route, peer)
        if response is not None:
            return response
        if self.on_local_miss is not None:
            if route.digest is not None:
                self.on_local_miss(str(route.digest))
            elif registry is not None:
                self.on_local_miss(f"{registry}/{route.name}:{route.tag}")
        if self.miss is not None and not peer:
            mirrored = await self.miss.fetch(request, route, registry)
            response = mirrored or self._unknown(route, "not on this node")
            response.mirrored = True
            return response
        return self._unknown(route, "not on this node")

    async def _blob(
        self, request: Request, route: DistributionPath, from_peer: bool
    ) -> Response | None:
        """This node's blob; for a peer also one still downloading, within the stream cap."""
        response = self._local_blob(request, route)
        if not from_peer:
            return response
        digest = str(route.digest)
        if response is not None and not await self._proven(request, route, response):
            response.release()
            return None
        if response is None and self.inflight is not None:
            response = await self.inflight.response(request, digest)
            if response is not None and not self._passed_on(digest, response):
                response.release()
                return unavailable(
                    "passing another download on to peers; ask another source",
                    close=False,
                    handler="blob",
                )
            if response is None:  # committed while we looked
                response = self._local_blob(request, route)
        if response is None:
            return None
        # A client sent here by a peer's redirect (--mirror-relay=redirect) was promised
        # this node; a 503 would send its containerd upstream. Counted, never refused.
        redirected = request.query_param(MIRRORED_QUERY) == "true"
        return self._capped(request, digest, response, cap=not redirected)

    def _passed_on(self, digest: str, response: Response) -> bool:
        return self.forwards is None or response.status not in (200, 206) or self.forwards(digest)

    async def _proven(self, request: Request, route: DistributionPath, response: Response) -> bool:
        """A local blob a peer asked for hashes to its digest (a HEAD sends no bytes)."""
        body = response.body
        if (
            request.method != "GET"
            or not isinstance(body, FileBody | MultipartFileBody)
            or route.digest is None
        ):
            return True
        return await self.proofs.servable(route.digest, body.fd)

    def _capped(
        self, request: Request, digest: str, response: Response, *, cap: bool = True
    ) -> Response:
        """A peer's blob body, counted against the node's peer stream cap (busy past it)."""
        body = response.body
        if request.method != "GET" or isinstance(body, bytes):
            return response
        if self.peer_pacer is not None and hasattr(body, "pacer"):
            body.pacer = self.peer_pacer
        if self.stream_cap is None:
            return response
        spare_only = STRIPE_HEADER in request.headers and len(self.stream_cap) > 0
        # Only a peer's mirror is ever a leaf: it resumes elsewhere when its stream is
        # ended. A containerd sent here by a redirect would fail its pull instead.
        passes_on = not cap or request.headers.get(FORWARDS_HEADER) == "1"
        if cap and passes_on and not spare_only and self.stream_cap.full:
            self.stream_cap.make_room(digest)
        if spare_only or not self.stream_cap.acquire(digest, force=not cap):
            response.release()
            return unavailable(
                "streaming to as many peers as it may; ask another source",
                close=False,
                handler="blob",
            )
        response.body = self.stream_cap.hold(digest, body, passes_on=passes_on)
        return response

    @staticmethod
    def _unknown(route: DistributionPath, why: str) -> Response:
        if route.kind is Kind.MANIFEST:
            return error_response(
                404, "MANIFEST_UNKNOWN", f"manifest unknown: {why}", handler="manifest"
            )
        return error_response(404, "BLOB_UNKNOWN", f"blob unknown: {why}", handler="blob")

    async def _local_manifest(
        self, request: Request, route: DistributionPath, registry: str | None
    ) -> Response | None:
        digest = route.digest
        if digest is None:
            if registry is None:
                return None
            target = await self.store.resolve_tag(f"{registry}/{route.name}:{route.tag}")
            if target is None:
                return None
            digest = target.digest
        manifest = self.store.manifest(digest)
        if manifest is None:
            return None
        headers = [
            ("Content-Type", manifest.media_type),
            ("Docker-Content-Digest", str(manifest.digest)),
            API_VERSION_HEADER,
            ("Accept-Ranges", "bytes"),
        ]
        body = manifest.content
        size = len(body)
        try:
            byte_range = parse_range(request.headers.get("range"), size)
        except Unsatisfiable:
            return range_not_satisfiable(size, "manifest")
        if byte_range is None:
            expires = (
                math.inf if route.digest is not None else trio.current_time() + self.store.tag_ttl
            )
            self._prepared.put(
                request.target, _Prepared(headers, body, expires, self.store.generation)
            )
            return Response(200, headers, body, handler="manifest", source="local")
        headers.append(("Content-Range", byte_range.content_range(size)))
        return Response(
            206, headers, body[byte_range.start : byte_range.end + 1], handler="manifest"
        )

    def _local_blob(self, request: Request, route: DistributionPath) -> Response | None:
        assert route.digest is not None
        blob = self.store.open_blob(route.digest)
        if blob is None:
            return None
        headers = blob_headers(str(route.digest))
        try:
            ranges = parse_ranges(request.headers.get("range"), blob.size)
        except Unsatisfiable:
            FileBody(blob.fd, 0, 0).close()
            return range_not_satisfiable(blob.size, "blob")
        if ranges is None:
            return Response(
                200, headers, FileBody(blob.fd, 0, blob.size), handler="blob", source="local"
            )
        if len(ranges) > 1:
            # What eStargz readers ask for; a lazy pull must not turn into a full one.
            boundary = secrets.token_hex(12)
            headers[0] = ("Content-Type", f"multipart/byteranges; boundary={boundary}")
            body: Body = multipart_body(blob.fd, ranges, blob.size, BLOB_CONTENT_TYPE, boundary)
            return Response(206, headers, body, handler="blob", source="local")
        (byte_range,) = ranges
        headers.append(("Content-Range", byte_range.content_range(blob.size)))
        body = FileBody(blob.fd, byte_range.start, byte_range.length)
        return Response(206, headers, body, handler="blob", source="local")


def _unauthorized() -> Response:
    response = error_response(401, "UNAUTHORIZED", "authentication required")
    response.headers.append(("WWW-Authenticate", CHALLENGE))
    return response


def _not_allowed(message: str, *, close: bool = False) -> Response:
    response = error_response(405, "UNSUPPORTED", message, close=close)
    response.headers.append(("Allow", "GET, HEAD"))
    return response
