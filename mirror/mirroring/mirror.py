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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import trio

from dht import Provider
from dht.claims import ClaimAnswer, Won
from mirror.containerd.hosts import FALLBACK_HEADER
from mirror.ingest.serving import INFLIGHT_HEADER
from mirror.mirroring.claimbook import ClaimBook
from mirror.mirroring.coldmiss import (
    ClaimIt,
    ColdMiss,
    ColdMissLimits,
    GiveUp,
    Pause,
    usable_source,
)
from mirror.mirroring.distrust import SourceDistrust, Where
from mirror.mirroring.ledger import WRONG_BYTES, NoLedger, PeerLedger, body_failure
from mirror.mirroring.peer import PeerError, PeerResponse, read_whole_body, request_head
from mirror.mirroring.providers import ProviderCache
from mirror.mirroring.race import Race, RaceLimits
from mirror.mirroring.racer import HeadRequest, RaceShell
from mirror.mirroring.relay import RelayBody, RelayStats
from mirror.mirroring.striper import (
    ANY_SOURCE,
    StripedBody,
    StripeReport,
    StripeSettings,
    second_holder,
)
from mirror.mirroring.tagvote import TagVote, VoteLimits
from mirror.mirroring.tagvoter import TagVoter
from mirror.oci.digest import digest_matches
from mirror.oci.distribution import DistributionPath, Kind
from mirror.oci.mediatypes import (
    BLOB_CONTENT_TYPE,
    MAX_MANIFEST_SIZE,
    parse_manifest,
    referenced_digests,
)
from mirror.oci.ranges import parse_decimal
from mirror.server.http import API_VERSION_HEADER
from mirror.server.registry import FORWARDS_HEADER, MIRRORED_HEADER, MIRRORED_QUERY
from mirror.server.request import Request
from mirror.server.response import Response, error_response
from mirror.server.sendfailures import PeerStalled

log = logging.getLogger("mirror.mirroring")

# Tells the client (and an operator with curl) which peer served a mirrored response.
PEER_HEADER = "X-Mirror-Peer"

# A blob up to this size is read whole and proven before it is sent, so a wrong one
# is replaced by the next source rather than cut off (image configs, small layers).
SMALL_BLOB_SIZE = MAX_MANIFEST_SIZE

# Records of one host tried before those of every other host (several instances
# may share a host on different ports; hundreds under one address are a Sybil).
SOURCES_PER_HOST = 2


@dataclass(frozen=True)
class MirrorSettings:
    resolve_timeout: float = 0.020
    resolve_retries: int = 3
    manifest_budget: float = 5.0
    head_timeout: float = 5.0
    stall_timeout: float = 10.0
    max_resumes: int = 3
    use_splice: bool = False
    # A whole blob from a complete holder: a 307 to it instead of a relay.
    redirect: bool = False
    # The least a complete holder must send while a body is relayed (relay.py), bytes/s.
    min_rate: float = 65536.0
    rate_window: float = 10.0
    # A blob nobody holds yet: claim it, or wait for the claimant (see coldmiss.py).
    cold_start: bool = True
    claim_lease: float = 5.0
    cold: ColdMissLimits = field(default_factory=ColdMissLimits)
    # Sources tried again after one served wrong bytes for a manifest or small blob.
    wrong_source_retries: int = 2
    # Providers asked at once which digest a tag names (tagvote.py).
    tag_voters: int = 3
    # A huge blob from several complete holders at once (striper.py).
    stripe: StripeSettings = field(default_factory=StripeSettings)


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
    # "" (none), "won", "lost", "busy", "refused", "timeout", "distrusted": how a blob nobody held
    # was decided.
    claim: str = ""
    digest_mismatch: bool = False
    inflight_source: bool = False
    # A tag: answers of other providers that named another digest (tagvote.py).
    tag_disagreements: int = 0
    # A blob fetched in ranges from several holders at once: how many of them sent bytes.
    striped: int = 0


class ClaimSource(Protocol):
    async def claim(self, key: str, lease: float) -> ClaimAnswer: ...


@dataclass(frozen=True, slots=True)
class _Pick:
    """Which providers of a key may serve one race, and in what order."""

    offset: int = 0  # in-flight sources must be past it
    holder: Provider | None = None  # the claim's holder: an in-flight source from byte 0
    # A search for a blob nobody held: the lookup may finish, busy sources come last.
    searching: bool = False
    busy: frozenset[Where] = frozenset()
    failed: frozenset[Where] = frozenset()  # broke or trickled in this body already
    complete_only: bool = False  # a fallback request: no download in progress


@dataclass(slots=True)
class _RaceResult:
    provider: Provider | None = None
    peer: PeerResponse | None = None
    busy_at: set[tuple[str, int]] = field(default_factory=set)

    @property
    def busy(self) -> bool:
        return bool(self.busy_at)


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
    offset: int  # the first byte asked for (in-flight sources must be past it)
    # Sent to this node as a fallback target (hosts.py): the client's own node's
    # mirror already searched and claimed; only complete holders serve it here.
    fallback: bool = False

    @property
    def bounded(self) -> bool:
        """Manifests and HEAD get a total budget; blob bodies only a stall timeout."""
        return self.kind == "manifest" or self.method == "HEAD"

    def request_headers(self, peer_headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        headers = list(peer_headers)
        if self.client_range is not None:
            headers.append(("Range", self.client_range))
        return headers

    def validate(self, peer: PeerResponse) -> None:
        if peer.status == 416 and self.client_range is not None:
            return  # the range selects nothing: the holder knows the size
        if peer.status == 401:
            raise PeerError("peer refused this node's credentials (basic auth differs?)")
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
        offset=_range_offset(request.headers.get("range")),
        fallback=FALLBACK_HEADER.lower() in request.headers,
    )


@dataclass(frozen=True, slots=True)
class _Served:
    """The peer that won the race for a `_Miss`, and its response head."""

    provider: Provider
    peer: PeerResponse
    time_to_head: float
    claim: str = ""

    @property
    def name(self) -> str:
        return f"{self.provider.host}:{self.provider.registry_port}"

    @property
    def inflight(self) -> bool:
        """The peer is serving a download it is still making (serving.py says so)."""
        return self.peer.header(INFLIGHT_HEADER.lower()) is not None

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
        claims: ClaimSource | None = None,
        book: ClaimBook | None = None,
        abort_ingest: Callable[[str], Awaitable[None]] | None = None,
        authorization: str | None = None,
        ledger: PeerLedger | None = None,
        forwards: Callable[[str], bool] | None = None,
        downloading: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.cache = cache
        # The digests the local containerd is downloading now (its ingests); None: take
        # every claim held as a download under way.
        self.downloading = downloading
        # Whether this node passes a blob it receives on to peers (forwarding.py): then
        # its requests say so, and a full source makes room for them.
        self.forwards = forwards
        # Per peer: bytes received from it, and each request to it that failed.
        self.ledger: PeerLedger = ledger if ledger is not None else NoLedger()
        # Sent on every request to a peer: the loop guard, and the cluster's basic
        # auth credentials when the registry port requires them (basicauth.py).
        self.peer_headers = [(MIRRORED_HEADER, "true")]
        if authorization is not None:
            self.peer_headers.append(("Authorization", authorization))
        self.settings = settings or MirrorSettings()
        # containerd drops its Authorization header on a redirect to another host.
        self._redirects = self.settings.redirect and authorization is None
        self.claims = claims
        self.book = book if book is not None else ClaimBook(self.settings.claim_lease)
        self.latencies = HeadLatencies()
        self.distrust = SourceDistrust()
        # Blobs whose striped bytes were wrong: relayed from one holder for now (striper.py).
        self.unstriped = SourceDistrust()
        # Drops the local download a wrong relay poisoned, before its reset (poisoned.py).
        self.abort_ingest = abort_ingest
        self._on_event = on_event

    def _headers_for(self, digest: str | None) -> list[tuple[str, str]]:
        if digest is None or self.forwards is None or not self.forwards(digest):
            return self.peer_headers
        return [*self.peer_headers, (FORWARDS_HEADER, "1")]

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
        if event.striped:
            fields["striped"] = event.striped
        log.log(
            logging.DEBUG if event.outcome == "miss" else logging.INFO, "mirrored", extra=fields
        )
        if self._on_event is not None:
            self._on_event(event)

    def _attempt_failed(self, provider: Provider, reason: str) -> None:
        self.ledger.peer_failed(provider.host, reason)

    def _finished(
        self,
        miss: _Miss,
        served: _Served,
        outcome: Literal["peer", "failed"],
        sent: int,
        resumes: int = 0,
        digest_mismatch: bool = False,
        tag_disagreements: int = 0,
        striped: int = 0,
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
                served.claim,
                digest_mismatch,
                served.inflight,
                tag_disagreements,
                striped,
            )
        )

    async def fetch(
        self, request: Request, route: DistributionPath, registry: str | None
    ) -> Response | None:
        miss = _plan(request, route, registry, trio.current_time())
        if miss is None:
            return None
        budget = self.settings.manifest_budget if miss.bounded else math.inf
        head = HeadRequest(
            miss.method,
            miss.target,
            miss.request_headers(self._headers_for(miss.digest if miss.kind == "blob" else None)),
            miss.validate,
        )
        if miss.digest is None:
            return await self._tag(miss, head, budget)
        # Redirect mode: a HEAD finds the source, so that a complete holder is not sent
        # a GET whose body would be thrown away (and hold one of its peer streams).
        redirecting = self._redirects and miss.kind == "blob" and miss.method == "GET"
        find = (
            HeadRequest("HEAD", head.target, head.headers, head.validate) if redirecting else head
        )
        for _ in range(1 + self.settings.wrong_source_retries):
            left = budget - (trio.current_time() - miss.started)
            served = await self._find(miss, find, left)
            if served is None:
                return None
            try:
                return await self._answer(miss, served, head, budget, redirecting)
            except WrongBytes:
                continue  # that source is distrusted now: the next one
        return None

    async def _answer(
        self, miss: _Miss, served: _Served, head: HeadRequest, budget: float, redirecting: bool
    ) -> Response | None:
        """The winning source's answer as this node's (WrongBytes: try the next source)."""
        if served.peer.status == 416:
            return self._unsatisfiable(miss, served)
        if redirecting:
            if not served.inflight and served.peer.content_length > SMALL_BLOB_SIZE:
                # A huge layer with a second holder is striped instead: a 307 would tie
                # it to one holder's uplink.
                striped = await self._striped(miss, served)
                return striped if striped is not None else self._redirect(miss, served)
            got = await self._get_from(miss, served, head)
            if got is None:
                return None
            served = got
        if miss.method == "HEAD":
            return self._head(miss, served)
        if miss.kind == "manifest" or _small_whole(miss, served):
            return await self._small(miss, served, budget)
        return await self._blob(miss, served)

    async def _find(self, miss: _Miss, head: HeadRequest, budget: float) -> _Served | None:
        """The peer that serves `miss`: a race, then the cold-start path for a blob
        nobody held; None (after a miss event) when no source answered."""
        found = await self._race(
            miss.key, head, budget, _Pick(miss.offset, complete_only=miss.fallback)
        )
        claim = ""
        if found.peer is None and self._cold_eligible(miss):
            found, claim = await self._cold(miss, head, busy_at=found.busy_at)
        if found.peer is None or found.provider is None:
            self._missed(miss, claim)
            return None
        return _Served(found.provider, found.peer, trio.current_time() - miss.started, claim)

    def _missed(self, miss: _Miss, claim: str = "") -> None:
        duration = trio.current_time() - miss.started
        self._emit(
            MirrorEvent(
                miss.kind,
                miss.method,
                miss.key,
                miss.registry,
                "miss",
                "",
                404,
                0,
                duration,
                claim=claim,
            )
        )

    async def _tag(self, miss: _Miss, head: HeadRequest, budget: float) -> Response | None:
        """A manifest by tag: the digest most of the first providers' answers name
        (tagvote.py), its body proven against it."""
        settings = self.settings
        limits = VoteLimits(
            voters=settings.tag_voters,
            grace=self.latencies.hedge_delay(),
            resolve_timeout=settings.resolve_timeout,
            retries=settings.resolve_retries,
            budget=budget,
        )

        def wrong_bytes(provider: Provider, peer: PeerResponse, digest: str) -> None:
            served = _Served(provider, peer, trio.current_time() - miss.started)
            self._wrong_bytes(miss, served, digest, [peer.where], sent=0)

        voter = TagVoter(
            TagVote[Provider](limits, trio.current_time()),
            self._sources(miss.key, _Pick()),
            head,
            stall_timeout=settings.stall_timeout,
            on_wrong_bytes=wrong_bytes,
            on_failure=self._attempt_failed,
        )
        decided, ballot = await voter.run()
        if decided.winner is None or ballot is None:
            self._missed(miss)
            return None
        served = _Served(decided.winner, ballot.peer, trio.current_time() - miss.started)
        if decided.disagreeing:
            log.warning(
                "providers disagree on a tag: the digest most of them name is served",
                extra={
                    "key": miss.key,
                    "digest": decided.digest,
                    "agreeing": decided.agreeing,
                    "disagreeing": decided.disagreeing,
                },
            )
        self.latencies.add(served.time_to_head)
        if miss.method == "HEAD":
            # containerd resolves a tag with HEAD, then GETs the manifest by this digest
            # at once: the peer that answered holds it, no lookup needed.
            self.cache.hint(decided.digest, decided.winner)
            return self._head(miss, served, decided.disagreeing)
        ballot.peer.close()
        return self._proven(miss, served, ballot.body, decided.disagreeing)

    def _cold_eligible(self, miss: _Miss) -> bool:
        return (
            self.settings.cold_start
            and not miss.fallback
            and self.claims is not None
            and miss.kind == "blob"
            and miss.method == "GET"
            and miss.digest is not None
        )

    async def _cold(
        self, miss: _Miss, head: HeadRequest, *, busy_at: set[tuple[str, int]]
    ) -> tuple[_RaceResult, str]:
        """No peer served the blob: claim it, or stream it from its claimant or another
        source once one has room (coldmiss.py)."""
        assert self.claims is not None
        now = trio.current_time()
        # A node already fetching a blob it claimed searches before it claims another:
        # its downlink is taken, and another node's claim spreads the roots. A claim
        # whose download never began (the GET was not containerd's, or the pull was
        # given up) takes no downlink.
        fetching = self._fetching_a_claim(miss.key, now)
        core = ColdMiss(now, self.settings.cold, busy=bool(busy_at) or fetching)
        # Sources that answered busy are asked last from then on: the next search goes
        # to those still receiving the blob first, so the load spreads into a tree.
        deferred = set(busy_at)
        while True:
            step = core.next_step(trio.current_time())
            if isinstance(step, GiveUp):
                if step.won:
                    log.info("claimed: fetching from the upstream", extra={"key": miss.key})
                else:
                    log.info(
                        "no source and no claim: the upstream serves this one",
                        extra={"key": miss.key, "reason": step.reason, "claims": core.claims},
                    )
                return _RaceResult(), step.reason
            if isinstance(step, ClaimIt):
                answer = await self.claims.claim(miss.key, self.settings.claim_lease)
                if isinstance(answer, Won):
                    self.book.won(miss.key, trio.current_time(), answer.claim.expires)
                core.claimed(answer, trio.current_time())
            elif isinstance(step, Pause):
                await trio.sleep_until(step.until)
            else:
                holder = step.holder
                if holder is not None and self._distrusted(miss.key, holder):
                    # It served wrong bytes of this blob: the upstream serves it now.
                    log.info("the claim's holder is distrusted", extra={"key": miss.key})
                    return _RaceResult(), "distrusted"
                self.cache.forget(miss.key)
                if holder is not None:
                    self.cache.hint(miss.key, holder)
                pick = _Pick(miss.offset, step.holder, searching=True, busy=frozenset(deferred))
                found = await self._race(miss.key, head, math.inf, pick)
                if found.peer is not None:
                    return found, "lost" if core.claims else "busy"
                deferred |= found.busy_at
                core.search_failed(trio.current_time(), busy=found.busy)

    def _fetching_a_claim(self, key: str, now: float) -> bool:
        others = [held for held in self.book.held(now) if held != key]
        if not others or self.downloading is None:
            return bool(others)
        receiving = set(self.downloading())
        return any(held in receiving for held in others)

    def _distrusted(self, key: str, provider: Provider) -> bool:
        where = (provider.host, provider.registry_port)
        return self.distrust.distrusted(key, where, trio.current_time())

    def _unsatisfiable(self, miss: _Miss, served: _Served) -> Response:
        served.peer.close()
        self._finished(miss, served, "peer", 0)
        response = error_response(416, "RANGE_INVALID", "range not satisfiable", handler=miss.kind)
        content_range = served.peer.header("content-range")
        if content_range and content_range.startswith("bytes */"):
            response.headers.append(("Content-Range", content_range))
        response.headers.append((PEER_HEADER, served.name))
        return response

    def _head(self, miss: _Miss, served: _Served, tag_disagreements: int = 0) -> Response:
        served.peer.close()
        self._finished(miss, served, "peer", 0, tag_disagreements=tag_disagreements)
        return Response(
            served.peer.status,
            served.response_headers(miss.key),
            b"",
            handler=miss.kind,
            source="peer",
            declared_length=served.peer.content_length,
        )

    async def _small(self, miss: _Miss, served: _Served, budget: float) -> Response | None:
        """A manifest, or a blob small enough to hold: read whole and proven before it
        is sent (WrongBytes when it does not hash to its digest: try the next source)."""
        peer = served.peer
        deadline = trio.current_time() + max(budget - served.time_to_head, 0.001)
        try:
            with trio.fail_at(deadline):
                body = await read_whole_body(peer, self.settings.stall_timeout)
        except (PeerError, PeerStalled, OSError, trio.TooSlowError) as exc:
            log.warning("peer failed mid-body", extra={"peer": served.name, "error": str(exc)})
            self.ledger.peer_failed(served.provider.host, body_failure(exc))
            self._finished(miss, served, "failed", 0)
            return None
        finally:
            peer.close()
        served_digest = peer.header("docker-content-digest")
        expected = miss.digest or served_digest
        if peer.status == 200 and expected is not None and not digest_matches(expected, body):
            self._wrong_bytes(miss, served, expected, [peer.where], sent=0)
            raise WrongBytes(expected)
        return self._proven(miss, served, body)

    def _proven(
        self, miss: _Miss, served: _Served, body: bytes, tag_disagreements: int = 0
    ) -> Response:
        """A manifest or small blob whose body hashes to its digest: sent, and the
        peer that served a manifest hinted for what it names."""
        peer = served.peer
        served_digest = peer.header("docker-content-digest")
        self.ledger.peer_received(served.provider.host, len(body))
        self._finished(miss, served, "peer", len(body), tag_disagreements=tag_disagreements)
        if miss.kind == "manifest":
            if miss.digest is None and served_digest:
                # containerd asks for the manifest by this digest next.
                self.cache.hint(served_digest, served.provider)
            document = parse_manifest(body) if peer.status == 200 else None
            # The peer that holds a manifest almost surely holds what it names: the
            # requests for those follow at once and need not wait for the DHT.
            for child in referenced_digests(document) if document else ():
                self.cache.hint(child, served.provider)
        return Response(
            peer.status, served.response_headers(miss.key), body, handler=miss.kind, source="peer"
        )

    def _wrong_bytes(
        self, miss: _Miss, served: _Served, digest: str, sources: list[Where], sent: int
    ) -> None:
        """Sources that served bytes not matching `digest`: counted, logged, and not
        asked for it again."""
        now = trio.current_time()
        for where in sources:
            self.ledger.peer_failed(where[0], WRONG_BYTES)
            self.distrust.distrust(digest, where, now)
            if miss.key != digest:  # a tag: that source's answers for it are suspect too
                self.distrust.distrust(miss.key, where, now)
        log.warning(
            "peer served wrong bytes: source dropped for this digest",
            extra={"key": miss.key, "digest": digest, "peers": [f"{h}:{p}" for h, p in sources]},
        )
        self._finished(miss, served, "failed", sent, digest_mismatch=True)

    def _redirect(self, miss: _Miss, served: _Served) -> Response:
        """A 307 to the holder: containerd reads straight from its sendfile, and on a
        break comes back here at its offset (another holder, or a relay). The mark in
        the URL makes the holder serve its own content only, as the header does."""
        served.peer.close()
        provider = served.provider
        host = f"[{provider.host}]" if ":" in provider.host else provider.host
        separator = "&" if "?" in miss.target else "?"
        location = (
            f"http://{host}:{provider.registry_port}{miss.target}{separator}{MIRRORED_QUERY}=true"
        )
        self._finished(miss, served, "peer", 0)
        headers = [
            ("Location", location),
            ("Docker-Content-Digest", miss.key),
            API_VERSION_HEADER,
            (PEER_HEADER, served.name),
        ]
        return Response(307, headers, b"", handler=miss.kind, source="peer")

    async def _get_from(self, miss: _Miss, served: _Served, head: HeadRequest) -> _Served | None:
        """The body after a HEAD found its source (redirect mode: a download in
        progress or a small blob is relayed): that source first, else a new race."""
        served.peer.close()
        provider = served.provider
        try:
            with trio.fail_after(self.settings.head_timeout):
                peer = await request_head(
                    provider.host, provider.registry_port, "GET", head.target, head.headers
                )
            try:
                head.validate(peer)
            except PeerError:
                peer.close()
                raise
        except (PeerError, OSError, trio.TooSlowError):
            return await self._find(miss, head, math.inf)
        return _Served(provider, peer, trio.current_time() - miss.started, served.claim)

    async def _blob(self, miss: _Miss, served: _Served) -> Response:
        peer = served.peer
        striped = await self._striped(miss, served)
        if striped is not None:
            return striped
        # Several ranges in one multipart body: relayed as they come, never resumed (no
        # offset in the blob names where such a body broke).
        multipart = (peer.header("content-type") or "").startswith("multipart/byteranges")
        start = 0
        if peer.status == 206 and not multipart:
            start = _range_start(peer.header("content-range"))
        end = start + peer.content_length - 1

        async def resume(offset: int) -> PeerResponse:
            # Every source of this body so far broke or fell below the rate floor.
            failed = set(body.stats.sources)
            return await self._resume(
                miss.key, miss.target, offset, end, failed, complete_only=miss.fallback
            )

        def relay_done(stats: RelayStats) -> None:
            for (host, _), count in zip(stats.sources, stats.source_bytes, strict=True):
                if count:
                    self.ledger.peer_received(host, count)
            for (host, _), reason in stats.failures:
                self.ledger.peer_failed(host, reason)
            if stats.digest_mismatch and miss.digest is not None:
                self._wrong_bytes(miss, served, miss.digest, stats.sources, stats.bytes_relayed)
                return
            complete = stats.bytes_relayed == peer.content_length
            self._finished(
                miss,
                served,
                "peer" if complete else "failed",
                stats.bytes_relayed,
                stats.resumes,
            )

        # A whole blob is proven on the way, its end held back until it is; a range
        # cannot be hashed against the digest (containerd proves it on commit).
        verify = miss.digest if start == 0 and not multipart and _whole(peer) else None

        body = RelayBody(
            peer,
            peer.content_length,
            start,
            resume=None if multipart else resume,
            max_resumes=self.settings.max_resumes,
            stall_timeout=self.settings.stall_timeout,
            use_splice=self.settings.use_splice,
            min_rate=self.settings.min_rate,
            rate_window=self.settings.rate_window,
            on_done=relay_done,
            verify=verify,
            before_reset=self._aborter(miss.digest) if verify else None,
        )
        return Response(
            peer.status, served.response_headers(miss.key), body, handler=miss.kind, source="peer"
        )

    async def _striped(self, miss: _Miss, served: _Served) -> Response | None:
        """A whole blob of `stripe.threshold` bytes or more, from a complete holder, with
        a second one known: fetched in ranges from several at once (striper.py). In
        redirect mode too: a 307 ties the whole layer to one holder's uplink."""
        peer, stripe = served.peer, self.settings.stripe
        if not (
            miss.method == "GET"
            and miss.digest is not None
            and peer.status == 200
            and not served.inflight
            and stripe.applies(peer.content_length)
            and not self.unstriped.distrusted(miss.digest, ANY_SOURCE, trio.current_time())
        ):
            return None
        first = (served.provider.host, served.provider.registry_port)
        pick = _Pick(complete_only=True)
        if not await second_holder(self._sources(miss.key, pick), first, stripe.holder_wait):
            return None
        peer.close()  # its body is asked for again, in ranges

        def done(report: StripeReport) -> None:
            if report.digest_mismatch:
                self._striped_wrong(miss, served, report)
                return
            outcome: Literal["peer", "failed"] = "peer" if report.sent == length else "failed"
            holders = len(report.stats.contributors)
            self._finished(
                miss, served, outcome, report.sent, report.stats.replaced, striped=holders
            )

        length, settings = peer.content_length, self.settings
        body = StripedBody(
            target=miss.target,
            headers=self.peer_headers,
            length=length,
            digest=miss.digest,
            first_holder=first,
            sources=self._sources(miss.key, pick),
            limits=stripe.limits(
                stall_timeout=settings.stall_timeout,
                min_rate=settings.min_rate,
                rate_window=settings.rate_window,
            ),
            on_done=done,
            before_reset=self._aborter(miss.digest),
        )
        return Response(
            200, served.response_headers(miss.key), body, handler=miss.kind, source="peer"
        )

    def _striped_wrong(self, miss: _Miss, served: _Served, report: StripeReport) -> None:
        """A striped blob that did not hash to its digest. Which holder lied cannot be
        told from the whole: none is distrusted, but the blob is not striped again for
        the hour, so that the next attempt, from one holder, blames the right one."""
        assert miss.digest is not None
        self.unstriped.distrust(miss.digest, ANY_SOURCE, trio.current_time())
        suspects = report.stats.contributors
        log.warning(
            "striped bytes were wrong: the blob is relayed from one holder from now on",
            extra={"key": miss.key, "peers": [f"{h}:{p}" for h, p in suspects]},
        )
        self._finished(
            miss, served, "failed", report.sent, digest_mismatch=True, striped=len(suspects)
        )

    def _aborter(self, digest: str | None) -> Callable[[], Awaitable[None]] | None:
        abort = self.abort_ingest
        if abort is None or digest is None:
            return None
        return lambda: abort(digest)

    async def _resume(
        self,
        key: str,
        target: str,
        offset: int,
        end: int,
        failed: set[Where],
        *,
        complete_only: bool,
    ) -> PeerResponse:
        def validate(peer: PeerResponse) -> None:
            if peer.status != 206 or _range_start(peer.header("content-range")) != offset:
                raise PeerError(f"peer cannot resume at {offset} (status {peer.status})")

        headers = [*self._headers_for(key), ("Range", f"bytes={offset}-{end}")]
        head = HeadRequest("GET", target, headers, validate)
        # Sources that answered busy are alive: waited for, as a cold miss waits (a
        # stream ended to make room for a forwarding peer lands here), rather than
        # ending the body short and sending containerd through a new miss.
        limits = self.settings.cold
        deadline = trio.current_time() + limits.wait_budget
        pause = limits.first_pause
        busy: set[Where] = set()
        while True:
            self.cache.forget(key)  # sources found before the failure may be all there was
            pick = _Pick(
                offset, failed=frozenset(failed), complete_only=complete_only, busy=frozenset(busy)
            )
            found = await self._race(key, head, math.inf, pick)
            if found.peer is not None and found.provider is not None:
                break
            # Nobody busy: no source is left (those announced short of the offset may
            # be fed by the one that failed: waiting for them let a claimant whose
            # ingest was truncated commit and keep its claim, so three pullers waited
            # out their budget and went upstream; tests/coldstart, truncated midway).
            if not found.busy or trio.current_time() + pause > deadline:
                raise PeerError(f"no provider could resume {key} at byte {offset}")
            busy |= found.busy_at
            await trio.sleep(pause)
            pause = min(pause * 2, limits.max_pause)
        log.info(
            "resumed from another peer",
            extra={
                "key": key,
                "offset": offset,
                "peer": f"{found.provider.host}:{found.provider.registry_port}",
            },
        )
        return found.peer

    async def _sources(self, key: str, pick: _Pick) -> AsyncIterator[Provider]:
        """The providers of `key` that `pick` allows; those busy a moment ago after all
        the others, and a host's records past its first two after those: one host
        filling the answer with records under many node ids must not hide the others."""
        later: list[Provider] = []
        same_host: list[Provider] = []
        per_host: dict[str, int] = {}
        async for provider in self.cache.providers(key):
            if pick.complete_only and provider.inflight:
                continue
            if not usable_source(provider, pick.offset, pick.holder):
                continue
            if self._distrusted(key, provider):
                continue
            where = (provider.host, provider.registry_port)
            if where in pick.failed:
                continue
            if where in pick.busy:
                later.append(provider)
            elif per_host.get(provider.host, 0) >= SOURCES_PER_HOST:
                same_host.append(provider)
            else:
                per_host[provider.host] = per_host.get(provider.host, 0) + 1
                yield provider
        for provider in (*later, *same_host):
            yield provider

    async def _race(
        self,
        key: str,
        head: HeadRequest,
        budget: float,
        pick: _Pick,
    ) -> _RaceResult:
        """Race the usable sources of `key` for a head; `busy_at`: those at their stream cap."""
        result = _RaceResult()
        accept = head.validate

        def validate(peer: PeerResponse) -> None:
            if peer.status == 503:
                # Where it was asked, not getpeername(): a source that answers busy and
                # closes at once may have reset the socket by now (ENOTCONN), and the
                # busy answer was then taken for a failure.
                result.busy_at.add(peer.where)
            accept(peer)

        head = HeadRequest(head.method, head.target, head.headers, validate)
        settings = self.settings
        # A search for a blob nobody held is already waiting: it lets the lookup finish
        # (the sources that were busy come last, only once it has).
        resolve_timeout = settings.resolve_timeout
        if pick.searching:
            resolve_timeout = max(resolve_timeout, settings.cold.search_resolve_timeout)
        limits = RaceLimits(
            resolve_timeout=resolve_timeout,
            resolve_retries=settings.resolve_retries + len(pick.busy),
            hedge_delay=self.latencies.hedge_delay(),
            head_timeout=settings.head_timeout,
            budget=budget,
        )
        race = Race[Provider](limits, trio.current_time())
        sources = self._sources(key, pick)
        done, peer = await RaceShell(race, sources, head, on_failure=self._attempt_failed).run()
        if done.winner is None or peer is None:
            log.debug("no peer answered", extra={"key": key, "reason": done.reason})
            return result
        self.latencies.add(done.head_latency)
        result.provider, result.peer = done.winner, peer
        return result


class WrongBytes(PeerError):
    """A source's answer did not hash to its digest."""


def _whole(peer: PeerResponse) -> bool:
    """The answer carries the whole object: a 200, or a 206 whose range covers it all."""
    if peer.status == 200:
        return True
    content_range = peer.header("content-range") or ""
    return _range_start(content_range) == 0 and content_range.endswith(
        f"-{peer.content_length - 1}/{peer.content_length}"
    )


def _small_whole(miss: _Miss, served: _Served) -> bool:
    """A whole blob small enough to hold and prove before any byte goes out (one
    still downloading streams as it arrives, proven on the way: relay.py)."""
    peer = served.peer
    return (
        miss.digest is not None
        and peer.status == 200
        and peer.content_length <= SMALL_BLOB_SIZE
        and not served.inflight
    )


def _range_offset(header: str | None) -> int:
    """`bytes=100-` / `bytes=100-199` -> 100; 0 for no (or any other) range."""
    if not header or not header.startswith("bytes="):
        return 0
    value = parse_decimal(header[6:].split("-", 1)[0].strip())
    return 0 if value is None else value


def _range_start(content_range: str | None) -> int:
    """`bytes 100-199/1000` -> 100; -1 when absent or malformed."""
    if not content_range or not content_range.startswith("bytes "):
        return -1
    value = parse_decimal(content_range[6:].split("-", 1)[0])
    return -1 if value is None else value
