"""The DHT node core, sans I/O: datagrams and timer ticks in, commands out.

The shell feeds it received datagrams (`receive`), calls `tick` when the time
of the last `WakeAt` has come, starts operations through the API methods, and
after each call executes `take_commands()`: `Send` a datagram, `WakeAt` a
time, `Progress` (an operation has news for whoever waits on it), `Ready`
(the routing table became non-empty or empty), `FetchPeers` (ask the
bootstrapper for addresses, then call `bootstrap`). Time is always an
argument (`now`, on the shell's clock; `now + clock_offset` is the wall clock
that seals are stamped with); randomness comes from the injected
`random.Random` instances (request ids, nonces and cookie secrets from the
unguessable one).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from .auth import Authenticator, Refusal
from .claims import ClaimTable
from .config import TICKS_PER_INTERVAL, NodeConfig
from .cookies import CookieIssuer, CookieJar, Validity
from .handler import RequestHandler
from .ids import key_id
from .lookup import Lookup
from .messages import (
    MAX_BYTES,
    MAX_DATAGRAM,
    MAX_LEASE,
    AddInflight,
    AddProvider,
    BoundedCache,
    ClaimRequest,
    Contact,
    DecodeError,
    Envelope,
    FindNode,
    GetProviders,
    Message,
    Ping,
    Pong,
    Provider,
    Release,
    Retry,
    decode,
    encode,
    reply_room,
)
from .operations import (
    ArbiterOp,
    Arbitrated,
    LookupOp,
    Operation,
    Origin,
    PingAll,
    PingOp,
    SequenceOp,
    announce,
    announce_inflight,
    bootstrap,
    find_nodes,
)
from .providers import ProviderStore, ReprovideSchedule
from .requests import Address, Match, Outcome, PendingRequest, RequestBatch, RequestTable
from .routing import RoutingTable

log = logging.getLogger(__name__)
T = TypeVar("T")

_MAX_PINGING = 64  # questionable contacts being pinged at once (and introductions)
_ANNOUNCE_WINDOW = 32
_ARBITERS_KEPT = 4096  # keys whose last arbiter is remembered for `release`
# Requests that change what a node stores: without a cluster key, served only for a
# source address proven by a cookie (the record names that address).
_STATEFUL = (AddProvider, AddInflight, ClaimRequest, Release)


@dataclass(frozen=True, slots=True)
class Send:
    address: Address
    data: bytes
    request_id: int | None  # None: a reply, tried once and dropped if the socket is full


@dataclass(frozen=True, slots=True)
class WakeAt:
    when: float


@dataclass(frozen=True, slots=True)
class Progress:
    op_id: int


@dataclass(frozen=True, slots=True)
class Ready:
    ready: bool


@dataclass(frozen=True, slots=True)
class FetchPeers:
    pass


Command = Send | WakeAt | Progress | Ready | FetchPeers


@dataclass(slots=True)
class CoreCounters:
    datagrams_in: int = 0
    dropped_oversized: int = 0
    dropped_malformed: int = 0
    dropped_unauthenticated: int = 0
    dropped_replayed: int = 0  # sealed datagrams seen before
    dropped_stale: int = 0  # sealed datagrams stamped outside the replay window
    # Replies with an unknown id, from the wrong address or of the wrong type:
    dropped_unsolicited: int = 0
    # Requests from an address without a valid cookie left unserved (answered
    # RETRY, or not at all when even that is larger than the request):
    dropped_unverified: int = 0
    retries: int = 0  # RETRY answers to our requests (sent again with the cookie)
    handler_errors: int = 0
    requests_sent: int = 0


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


class NodeCore:
    def __init__(
        self,
        config: NodeConfig,
        node_id: bytes,
        bound: Address,
        now: float,
        *,
        rng: random.Random,
        ids: random.Random | None = None,
        clock_offset: float = 0.0,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.bound = bound
        self.rng = rng
        self.k = config.k
        self.clock_offset = clock_offset  # wall clock - `now`; the shell keeps it current
        self.auth = Authenticator(config.cluster_key)
        self._budget = MAX_DATAGRAM - self.auth.overhead
        self.routing = RoutingTable(node_id, config.k)
        self.store = ProviderStore(config.record_ttl, rng=rng)
        self.schedule = ReprovideSchedule(config.reprovide_interval)
        self.claims = ClaimTable()
        self.handler = RequestHandler(
            self.routing,
            self.store,
            self.own_record,
            k=config.k,
            claims=self.claims,
            inflight_ttl=config.inflight_ttl,
            sealed=self.auth.enabled,
        )
        self._inflight: dict[bytes, tuple[int, int]] = {}  # own keys being fetched: progress
        # own keys being fetched: the nodes their last lookup found, and when
        self._inflight_holders: dict[bytes, tuple[list[Contact], float]] = {}
        self._arbiters: BoundedCache[bytes, list[Contact | None]] = BoundedCache(_ARBITERS_KEPT)
        self._secure = ids or rng
        self.table = RequestTable(self._secure, max_in_flight=config.max_in_flight)
        self.cookies = CookieIssuer(self._secure)
        self.jar = CookieJar()
        self._learning = False  # pinging peers to learn our own address
        self._introducing: set[Address] = set()
        self.counters = CoreCounters()
        self.lookups = 0
        self.observed_host: str | None = None
        self._ids = itertools.count(1)
        self._outbox: list[Command] = []
        self._wake = math.nan
        self._ready = False
        self._unannounced: set[str] = set()
        self._pinging: set[bytes] = set()
        # Bootstrap: when to ask for peers next (None while asking or joined).
        self._bootstrap_at: float | None = now
        self._bootstrapping = False
        self._backoff = config.bootstrap_backoff
        self._refresh: Operation | None = None
        self._last_refresh = now
        self._refresh_check_at = now + min(config.refresh_interval, 5.0)
        tick = config.reprovide_interval / TICKS_PER_INTERVAL
        self._reprovide_tick = tick
        # Nodes started together do not tick together.
        self._reprovide_at = now + tick * rng.random() + tick
        self._flush(now)

    # -- shell entry points ------------------------------------------------------

    def take_commands(self) -> list[Command]:
        out, self._outbox = self._outbox, []
        return out

    def receive(self, data: bytes, host: str, port: int, now: float) -> None:
        """One datagram from (host, port); `host` canonical. Never raises."""
        counters = self.counters
        counters.datagrams_in += 1
        if len(data) > MAX_DATAGRAM:
            counters.dropped_oversized += 1
            return
        payload = self.auth.open(data, now + self.clock_offset)
        if isinstance(payload, Refusal):
            if payload is Refusal.STALE:
                counters.dropped_stale += 1
            elif payload is Refusal.REPLAYED:
                counters.dropped_replayed += 1
            else:
                counters.dropped_unauthenticated += 1
            return
        try:
            envelope = decode(payload)
        except DecodeError:
            counters.dropped_malformed += 1
            return
        self.receive_envelope(envelope, host, port, now, len(payload))

    def receive_envelope(
        self, envelope: Envelope, host: str, port: int, now: float, size: int = 0
    ) -> None:
        """A decoded datagram whose payload had `size` bytes (the most a reply to an
        unverified source may have)."""
        if envelope.sender_id == self.node_id:
            self.counters.dropped_unsolicited += 1
            return
        try:
            if envelope.message.IS_REPLY:
                self._on_reply(envelope, host, port, now)
            else:
                self._on_request(envelope, host, port, now, size)
        except Exception:
            # A bug in our own handling, not a peer's fault: keep serving.
            self.counters.handler_errors += 1
            log.exception("DHT: error handling a datagram from %s:%s", host, port)
        self._flush(now)

    def tick(self, now: float) -> None:
        self.table.expire(now)
        if now >= self.store.next_expiry():
            self.store.expire(now)  # one bounded batch; the next wake-up is now if more are due
        if now >= self.claims.next_expiry():
            self.claims.expire(now)
        if now >= self._reprovide_at:
            self._reprovide_at += self._reprovide_tick
            self._reprovide(now)
        if now >= self._refresh_check_at:
            self._refresh_check_at = now + min(self.config.refresh_interval, 5.0)
            self._maybe_refresh(now)
        if self._bootstrap_at is not None and now >= self._bootstrap_at:
            self._bootstrap_due(now)
        self._flush(now)

    def send_failed(self, request_id: int, now: float) -> None:
        self.table.fail(request_id, now)
        self._flush(now)

    # -- API ---------------------------------------------------------------------

    def ready(self) -> bool:
        return len(self.routing) > 0

    @property
    def address(self) -> Address:
        """The (host, UDP port) peers reach this node at."""
        if self.config.advertise_host:
            return self.config.advertise_host, self.bound[1]
        host = self.bound[0]
        if not is_wildcard(host):
            return self.bound
        return self.observed_host or host, self.bound[1]

    def own_record(self, kid: bytes) -> Provider | None:
        if self.schedule.has_id(kid):
            progress = None
        else:
            progress = self._inflight.get(kid)
            if progress is None:
                return None
        host, port = self.address
        return Provider(self.node_id, host, port, self.config.registry_port, progress)

    def provide_inflight(self, key: str, done: int, total: int, now: float) -> Operation | None:
        """Announce that this node is fetching `key` (`done` of `total` bytes so far).

        The records live `inflight_ttl` on the k closest nodes: call again with
        new progress more often than that. `provide` (on commit) replaces them
        with complete records; `withdraw_inflight` (on abort) stops naming this
        node itself, and the records elsewhere lapse. None: nothing to wait for
        (the key is provided complete already, or the node is not ready)."""
        if not 0 <= done <= total <= MAX_BYTES:
            raise ValueError("need 0 <= done <= total < 2**64")
        kid = key_id(key)
        if self.schedule.has_id(kid):
            return None
        self._inflight[kid] = (done, total)
        if not self.ready():
            return None
        self._learn_address(now)
        found = self._inflight_holders.get(kid)
        if found is not None and now - found[1] < self.config.inflight_ttl / 3:
            # Renewed progress goes to the nodes the last lookup found: they rarely
            # change within seconds, and each lookup asks up to k nodes.
            op = announce_inflight(self, self._new_id, kid, done, total, holders=found[0])
            return None if op is None else self._start(op, now)

        def remember(holders: list[Contact]) -> None:
            if holders:
                self._inflight_holders[kid] = (holders, now)

        op = announce_inflight(self, self._new_id, kid, done, total, on_holders=remember)
        return None if op is None else self._start(op, now)

    def withdraw_inflight(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._end_inflight(key_id(key))

    def _end_inflight(self, kid: bytes) -> None:
        self._inflight.pop(kid, None)
        self._inflight_holders.pop(kid, None)

    def provide(self, keys: Iterable[str], now: float) -> Operation | None:
        """Start announcing keys not provided yet; None if there is nothing to wait for."""
        keys = list(keys)
        for key in keys:
            self._end_inflight(key_id(key))  # complete now: records replace in-flight ones
        new = self.schedule.add(keys, now)
        if not new:
            return None
        if not self.ready():
            self._unannounced.update(new)
            return None
        return self._start(self._announce(new, now), now)

    def withdraw(self, keys: Iterable[str]) -> None:
        self._unannounced.difference_update(self.schedule.remove(keys))

    def get_providers(self, key: str, limit: int, now: float) -> LookupOp:
        kid = key_id(key)
        own = self.own_record(kid)
        local = ([own] if own else []) + self.store.get(kid, now)
        message = GetProviders(kid, min(limit, self.store.max_per_key))
        op = LookupOp(self, next(self._ids), kid, message, limit=limit)
        op._found(local)
        self._start(op, now)
        return op

    def find_node(self, target: bytes, now: float) -> LookupOp:
        op = LookupOp(self, next(self._ids), target, FindNode(target))
        self._start(op, now)
        return op

    def ping(self, address: Address, now: float, contact: Contact | None = None) -> PingOp:
        op = PingOp(self, next(self._ids), address, contact)
        self._start(op, now)
        return op

    def claim(self, key: str, lease: float, now: float) -> ArbiterOp:
        """Claim `key` at its arbiter (see `ArbiterOp`); claiming again renews."""
        if not 0 < lease <= MAX_LEASE:
            raise ValueError(f"lease must be in (0, {MAX_LEASE}]")
        kid = key_id(key)
        self._learn_address(now)

        def message() -> ClaimRequest:
            return ClaimRequest(kid, lease, *self.origin())

        def local(at: float) -> Arbitrated:
            return self.claims.claim(kid, self._own_provider(), at, lease)

        op = ArbiterOp(self, next(self._ids), kid, message, local)
        op.listeners.append(self._arbitrated)
        self._start(op, now)
        return op

    def release(self, key: str, now: float) -> ArbiterOp:
        """Release `key` at the arbiter the last claim reached (or at its arbiter now)."""
        kid = key_id(key)
        known = self._arbiters.pop(kid, None)

        def message() -> Release:
            return Release(kid, *self.origin())

        def local(at: float) -> Arbitrated:
            return self.claims.release(kid, self._own_provider(), at)

        op = ArbiterOp(self, next(self._ids), kid, message, local, known)
        self._start(op, now)
        return op

    def _own_provider(self) -> Provider:
        host, port = self.address
        return Provider(self.node_id, host, port, self.config.registry_port)

    def _arbitrated(self, op: Operation, now: float) -> None:
        if isinstance(op, ArbiterOp) and op.arbiters:
            self._arbiters.put(op.key, op.arbiters)

    def resume(self, op: LookupOp, now: float) -> None:
        """The caller has taken the providers found so far: go on looking."""
        op.resume(now)
        self._flush(now)

    def cancel(self, op: Operation, now: float) -> None:
        op.cancel(now)
        self._flush(now)

    def bootstrap(self, addresses: Iterable[Address], now: float) -> None:
        """The bootstrapper's answer to `FetchPeers`: ping them and join."""
        own = {self.bound, self.address}
        found = [a for a in addresses if a not in own]
        op = bootstrap(self, self._new_id, found, self.config.join_refresh)
        op.listeners.append(self._bootstrap_done)
        self._start(op, now)

    # -- the OperationHost seam ----------------------------------------------------

    def batch(
        self, on_outcome: Callable[[Outcome[T], float], None], *, stall: bool = False
    ) -> RequestBatch[T]:
        config = self.config
        return RequestBatch(
            on_outcome, config.request_timeout, config.stall_timeout if stall else None
        )

    def send(
        self,
        batch: RequestBatch[T],
        address: Address,
        message: FindNode
        | GetProviders
        | AddProvider
        | AddInflight
        | Ping
        | ClaimRequest
        | Release,
        tag: T,
    ) -> None:
        self.table.request(batch, address, message, tag)

    def close(self, batch: RequestBatch[T]) -> None:
        self.table.close(batch)

    def failed(self, contact: Contact, now: float) -> None:
        self.routing.on_failure(contact.node_id, (contact.host, contact.port))
        self._check_ready(now)

    def new_lookup(self, target: bytes) -> Lookup:
        k = self.config.k
        self.lookups += 1
        seeds = self.routing.closest(target, k)
        return Lookup(target, seeds, own_id=self.node_id, k=k, alpha=self.config.alpha)

    def finished(self, op: Operation, now: float) -> None:
        if isinstance(op, PingOp) and op.contact is not None:
            self._pinging.discard(op.contact.node_id)

    def progress(self, op: Operation) -> None:
        self._outbox.append(Progress(op.id))

    def own_id(self) -> bytes:
        return self.node_id

    def routing_closest(self, target: bytes, count: int) -> list[Contact]:
        return self.routing.closest(target, count)

    def random_id_in_bucket(self, index: int) -> bytes:
        return self.routing.random_id_in_bucket(index, self.rng)

    def network_size(self) -> int:
        return self.routing.estimate_network_size()

    def origin(self) -> Origin:
        host, port = self.address
        return host, port, self.config.registry_port

    # -- internals -------------------------------------------------------------------

    def _new_id(self) -> int:
        return next(self._ids)

    def _start(self, op: Operation, now: float) -> Operation:
        op.start(now)
        self._flush(now)
        return op

    def _announce(self, keys: Iterable[str], now: float) -> SequenceOp:
        self._learn_address(now)
        window = min(_ANNOUNCE_WINDOW, self.config.max_in_flight)
        return announce(self, self._new_id, [key_id(key) for key in keys], window)

    def _learn_address(self, now: float) -> None:
        """Bound to a wildcard, with no PONG yet, the node does not know the address
        its peers reach it at, which the messages that announce it carry: ask a
        few peers (their PONGs tell it) before those messages go out."""
        if self._learning or not is_wildcard(self.address[0]):
            return
        peers = self.routing.closest(self.node_id, 3)
        if not peers:
            return
        self._learning = True
        op = PingAll(self, self._new_id(), [(c.host, c.port) for c in peers])
        op.listeners.append(self._learned)
        self._start(op, now)

    def _learned(self, op: Operation, now: float) -> None:
        self._learning = False

    def _on_reply(self, envelope: Envelope, host: str, port: int, now: float) -> None:
        matched = self.table.match(envelope, (host, port))
        if matched is Match.UNSOLICITED:
            self.counters.dropped_unsolicited += 1
            return
        message = envelope.message
        if envelope.cookie is not None:
            if isinstance(message, Retry):  # the request goes again with it: no introduction
                self.jar.put((host, port), envelope.cookie, now)
            else:
                self._cookie_from((host, port), envelope.cookie, now)
        self._observe(Contact(envelope.sender_id, host, port), now)
        if isinstance(message, Pong):
            self.observed_host = message.observed_host
        if isinstance(matched, PendingRequest):
            if isinstance(message, Retry):
                self.counters.retries += 1
                self.table.retry(matched, now)
            else:
                self.table.deliver(matched, envelope, now)

    def _cookie_from(self, address: Address, cookie: bytes, now: float) -> None:
        """A peer that had given us no cookie yet could not tell our request from a
        spoofed one, and did not put us in its routing table: introduce ourselves
        with a PING that carries the cookie (it answers, and knows us)."""
        first = self.jar.get(address, now) is None
        self.jar.put(address, cookie, now)
        if first and len(self._introducing) < _MAX_PINGING and address not in self._introducing:
            self._introducing.add(address)
            op = PingOp(self, next(self._ids), address)
            op.listeners.append(lambda done, at: self._introducing.discard(address))
            self._start(op, now)

    def _on_request(self, envelope: Envelope, host: str, port: int, now: float, size: int) -> None:
        """Serve a request. A source without a valid cookie may be spoofed: it does
        not enter the routing table, gets no answer larger than its request, and
        (without a cluster key, where its address is its only credential) changes
        nothing here. Every answer to it carries a cookie."""
        validity = self.cookies.check(envelope.cookie, host, port, now)
        verified = validity is not Validity.INVALID
        if verified:
            self._observe(Contact(envelope.sender_id, host, port), now)
        reply: Message | None
        if not verified and not self.auth.enabled and isinstance(envelope.message, _STATEFUL):
            reply = Retry()
        else:
            reply = self.handler.handle(envelope, host, port, now)
        if reply is None:
            return
        cookie = None if validity is Validity.CURRENT else self.cookies.issue(host, port, now)
        data = encode(Envelope(envelope.request_id, self.node_id, reply, cookie), self._budget)
        if not verified and len(data) > size:
            reply = Retry()
            data = encode(Envelope(envelope.request_id, self.node_id, reply, cookie), self._budget)
            if len(data) > size:
                self.counters.dropped_unverified += 1
                return
        if isinstance(reply, Retry):
            self.counters.dropped_unverified += 1
        self._outbox.append(Send((host, port), self._wire(data, now), None))

    def _observe(self, contact: Contact, now: float) -> None:
        questionable = self.routing.observe(contact, now)
        if (
            questionable is not None
            and len(self._pinging) < _MAX_PINGING
            and questionable.node_id not in self._pinging
        ):
            self._pinging.add(questionable.node_id)
            self.ping((questionable.host, questionable.port), now, questionable)
        self._check_ready(now)

    def _check_ready(self, now: float) -> None:
        ready = self.ready()
        if ready == self._ready:
            return
        self._ready = ready
        self._outbox.append(Ready(ready))
        if not ready and not self._bootstrapping and self._bootstrap_at is None:
            self._backoff = self.config.bootstrap_backoff
            self._bootstrap_at = now

    def _wire(self, payload: bytes, now: float) -> bytes:
        if not self.auth.enabled:
            return payload
        return self.auth.seal(payload, now + self.clock_offset, self._secure.getrandbits(64))

    def _request_bytes(
        self, request_id: int, address: Address, message: Message, now: float
    ) -> bytes:
        """A request with the destination's cookie; without one, padded to the size
        of the answer it asks for (which the destination sends no larger)."""
        cookie = self.jar.get(address, now)
        pad = 0 if cookie is not None else reply_room(message, self._budget)
        envelope = Envelope(request_id, self.node_id, message, cookie)
        return self._wire(encode(envelope, self._budget, pad), now)

    def _flush(self, now: float) -> None:
        for out in self.table.dispatch(now):
            self.counters.requests_sent += 1
            data = self._request_bytes(out.request_id, out.address, out.message, now)
            self._outbox.append(Send(out.address, data, out.request_id))
        wake = self._next_wakeup()
        if wake != self._wake:
            self._wake = wake
            self._outbox.append(WakeAt(wake))

    def _next_wakeup(self) -> float:
        times = [self.table.next_deadline(), self.store.next_expiry(), self._reprovide_at]
        times.append(self.claims.next_expiry())
        times.append(self._refresh_check_at)
        if self._bootstrap_at is not None:
            times.append(self._bootstrap_at)
        return min(times)

    def _reprovide(self, now: float) -> None:
        due = self.schedule.pop_due(now)
        if not due:
            return
        if self.ready():
            self._start(self._announce(due, now), now)
        else:
            self._unannounced.update(due)

    def _maybe_refresh(self, now: float) -> None:
        interval = self.config.refresh_interval
        if self._refresh is not None or not self.ready() or now - self._last_refresh < interval:
            return
        self._last_refresh = now
        stale = self.routing.stale_buckets(now, interval)
        targets = [self.routing.random_id_in_bucket(index, self.rng) for index in stale]
        op = find_nodes(self, self._new_id, targets)
        self._refresh = op
        op.listeners.append(self._refresh_done)
        self._start(op, now)

    def _refresh_done(self, op: Operation, now: float) -> None:
        self._refresh = None

    def _bootstrap_due(self, now: float) -> None:
        self._bootstrap_at = None
        if self.ready():
            self._announce_unannounced(now)
            return
        self._bootstrapping = True
        self._outbox.append(FetchPeers())

    def _bootstrap_done(self, op: Operation, now: float) -> None:
        self._bootstrapping = False
        if not self.ready():
            self._bootstrap_at = now + self._backoff * self.rng.uniform(0.5, 1.0)
            self._backoff = min(self._backoff * 2, self.config.bootstrap_backoff_max)
            return
        self._backoff = self.config.bootstrap_backoff
        self._last_refresh = now
        self._announce_unannounced(now)

    def _announce_unannounced(self, now: float) -> None:
        if self._unannounced:
            keys = [key for key in self._unannounced if key in self.schedule]
            self._unannounced.clear()
            self._start(self._announce(keys, now), now)
