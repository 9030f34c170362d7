"""The DHT node core, sans I/O: datagrams and timer ticks in, commands out.

The shell feeds it received datagrams (`receive`), calls `tick` when the time
of the last `WakeAt` has come, starts operations through the API methods, and
after each call executes `take_commands()`: `Send` a datagram, `WakeAt` a
time, `Progress` (an operation has news for whoever waits on it), `Ready`
(the routing table became non-empty or empty), `FetchPeers` (ask the
bootstrapper for addresses, then call `bootstrap`). Time is always an
argument; randomness comes from the injected `random.Random` instances.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from .auth import Authenticator
from .claims import ClaimTable
from .config import TICKS_PER_INTERVAL, NodeConfig
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
    decode,
    encode,
)
from .operations import (
    ArbiterOp,
    Arbitrated,
    LookupOp,
    Operation,
    PingOp,
    SequenceOp,
    announce,
    announce_inflight,
    bootstrap,
    find_nodes,
)
from .providers import ProviderStore, ReprovideSchedule
from .requests import Address, Match, Outcome, RequestBatch, RequestTable
from .routing import RoutingTable

log = logging.getLogger(__name__)
T = TypeVar("T")

_MAX_PINGING = 64  # questionable contacts being pinged at once
_ANNOUNCE_WINDOW = 32
_ARBITERS_KEPT = 4096  # keys whose last arbiter is remembered for `release`


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
    # Replies with an unknown id, from the wrong address or of the wrong type:
    dropped_unsolicited: int = 0
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
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.bound = bound
        self.rng = rng
        self.k = config.k
        self.registry_port = config.registry_port
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
        )
        self._inflight: dict[bytes, tuple[int, int]] = {}  # own keys being fetched: progress
        self._arbiters: BoundedCache[bytes, list[Contact | None]] = BoundedCache(_ARBITERS_KEPT)
        self.table = RequestTable(ids or rng, max_in_flight=config.max_in_flight)
        self.auth = Authenticator(config.cluster_key)
        self._budget = MAX_DATAGRAM - self.auth.overhead
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
        self._expire_period = min(60.0, config.record_ttl / 4)
        self._expire_at = now + self._expire_period
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
        payload = self.auth.open(data)
        if payload is None:
            counters.dropped_unauthenticated += 1
            return
        try:
            envelope = decode(payload)
        except DecodeError:
            counters.dropped_malformed += 1
            return
        self.receive_envelope(envelope, host, port, now)

    def receive_envelope(self, envelope: Envelope, host: str, port: int, now: float) -> None:
        if envelope.sender_id == self.node_id:
            self.counters.dropped_unsolicited += 1
            return
        try:
            if envelope.message.IS_REPLY:
                self._on_reply(envelope, host, port, now)
            else:
                self._on_request(envelope, host, port, now)
        except Exception:
            # A bug in our own handling, not a peer's fault: keep serving.
            self.counters.handler_errors += 1
            log.exception("DHT: error handling a datagram from %s:%s", host, port)
        self._flush(now)

    def tick(self, now: float) -> None:
        self.table.expire(now)
        if now >= self._expire_at:
            self._expire_at = now + self._expire_period
            self.store.expire(now)
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
        message = AddInflight(kid, self.config.registry_port, done, total)
        return self._start(announce_inflight(self, self._new_id, message), now)

    def withdraw_inflight(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._inflight.pop(key_id(key), None)

    def provide(self, keys: Iterable[str], now: float) -> Operation | None:
        """Start announcing keys not provided yet; None if there is nothing to wait for."""
        keys = list(keys)
        for key in keys:
            self._inflight.pop(key_id(key), None)  # complete now: records replace in-flight ones
        new = self.schedule.add(keys, now)
        if not new:
            return None
        if not self.ready():
            self._unannounced.update(new)
            return None
        return self._start(self._announce(new), now)

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
        message = ClaimRequest(kid, lease, self.config.registry_port)

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

        def local(at: float) -> Arbitrated:
            return self.claims.release(kid, self._own_provider(), at)

        op = ArbiterOp(self, next(self._ids), kid, Release(kid), local, known)
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
        self.routing.on_failure(contact.node_id)
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

    # -- internals -------------------------------------------------------------------

    def _new_id(self) -> int:
        return next(self._ids)

    def _start(self, op: Operation, now: float) -> Operation:
        op.start(now)
        self._flush(now)
        return op

    def _announce(self, keys: Iterable[str]) -> SequenceOp:
        window = min(_ANNOUNCE_WINDOW, self.config.max_in_flight)
        return announce(self, self._new_id, [key_id(key) for key in keys], window)

    def _on_reply(self, envelope: Envelope, host: str, port: int, now: float) -> None:
        matched = self.table.match(envelope, (host, port))
        if matched is Match.UNSOLICITED:
            self.counters.dropped_unsolicited += 1
            return
        self._observe(Contact(envelope.sender_id, host, port), now)
        message = envelope.message
        if isinstance(message, Pong):
            self.observed_host = message.observed_host
        if not isinstance(matched, Match):
            self.table.deliver(matched, envelope, now)

    def _on_request(self, envelope: Envelope, host: str, port: int, now: float) -> None:
        self._observe(Contact(envelope.sender_id, host, port), now)
        reply = self.handler.handle(envelope, host, port, now)
        if reply is not None:
            self._outbox.append(Send((host, port), self._seal(envelope.request_id, reply), None))

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

    def _seal(self, request_id: int, message: Message) -> bytes:
        return self.auth.seal(encode(Envelope(request_id, self.node_id, message), self._budget))

    def _flush(self, now: float) -> None:
        for out in self.table.dispatch(now):
            self.counters.requests_sent += 1
            data = self._seal(out.request_id, out.message)
            self._outbox.append(Send(out.address, data, out.request_id))
        wake = self._next_wakeup()
        if wake != self._wake:
            self._wake = wake
            self._outbox.append(WakeAt(wake))

    def _next_wakeup(self) -> float:
        times = [self.table.next_deadline(), self._expire_at, self._reprovide_at]
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
            self._start(self._announce(due), now)
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
            self._start(self._announce(keys), now)
