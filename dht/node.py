"""DhtNode: the Trio shell that runs the sans-I/O core on a UDP transport.

Lifetimes: `DhtNode.open()` owns one nursery holding the receive loop, the
bootstrap/refresh loop, the re-provide loop, record expiry and stale-contact
pings. Leaving the `async with` cancels them all and closes the socket.

Advertised address: a node bound to a specific IP advertises that IP. A node
bound to a wildcard address advertises `advertise_host` when configured, else
the address its peers see: every PONG carries back the source address of the
PING as the responder observed it. Records stored on other nodes do not
depend on this: the storing node takes the provider's IP and UDP port from
the ADD_PROVIDER datagram's source address.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from .auth import Authenticator
from .bootstrap import Address, Bootstrapper
from .handler import RequestHandler
from .ids import ID_BITS, id_to_int, int_to_id, key_id, load_or_create_node_id, random_node_id
from .lookup import Lookup, State
from .messages import (
    MAX_KEYS_PER_ADD,
    AddProvider,
    Contact,
    Envelope,
    FindNode,
    GetProviders,
    Message,
    Nodes,
    Ping,
    Pong,
    Provider,
    Providers,
)
from .providers import (
    DEFAULT_RECORD_TTL,
    DEFAULT_REPROVIDE_INTERVAL,
    ProviderStore,
    ReprovideSchedule,
)
from .routing import RoutingTable
from .transport import STALLED, RequestBatch, UdpTransport, is_wildcard, open_udp_socket


@dataclass(frozen=True)
class NodeConfig:
    bind_host: str = "0.0.0.0"
    bind_port: int = 5001
    registry_port: int = 5000
    data_dir: Path | None = None
    cluster_key: bytes | None = None
    k: int = 20
    alpha: int = 3
    record_ttl: float = DEFAULT_RECORD_TTL
    reprovide_interval: float = DEFAULT_REPROVIDE_INTERVAL
    request_timeout: float = 0.5
    # A lookup request unanswered this long stops holding one of the alpha slots.
    stall_timeout: float = 0.05
    advertise_host: str | None = None
    max_in_flight: int = 256
    refresh_interval: float = 10 * 60.0
    bootstrap_timeout: float = 10.0
    bootstrap_backoff: float = 0.5  # first retry delay; doubles up to bootstrap_backoff_max
    bootstrap_backoff_max: float = 30.0
    # On joining, look up a random id in each bucket farther than our nearest neighbour.
    join_refresh: bool = True
    node_id: bytes | None = None  # fixed id (tests, benchmarks); else kept in data_dir, else random

    def __post_init__(self) -> None:
        if self.reprovide_interval * (1 + 1 / _TICKS_PER_INTERVAL) >= self.record_ttl:
            raise ValueError("reprovide_interval must leave records time before they lapse")
        if self.k < 1 or self.alpha < 1:
            raise ValueError("k and alpha must be positive")


_TICKS_PER_INTERVAL = 30  # re-provide in this many small batches per interval


@dataclass(frozen=True)
class NodeStats:
    routing_table_size: int
    lookups: int
    datagrams_in: int
    datagrams_out: int
    dropped_malformed: int
    dropped_oversized: int
    dropped_unauthenticated: int
    dropped_unsolicited: int
    requests_sent: int
    timeouts: int
    records_stored: int
    keys_provided: int


@dataclass
class LookupStats:
    """Filled in by `get_providers(..., stats=...)` as the lookup proceeds."""

    hops: int = 0
    messages: int = 0


class DhtNode:
    def __init__(
        self,
        config: NodeConfig,
        node_id: bytes,
        transport_socket: object,
        bootstrapper: Bootstrapper | None,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.bootstrapper = bootstrapper
        self.routing = RoutingTable(node_id, config.k)
        self.store = ProviderStore(config.record_ttl)
        self.schedule = ReprovideSchedule(config.reprovide_interval)
        self.handler = RequestHandler(self.routing, self.store, self._own_record, k=config.k)
        self.transport = UdpTransport(
            transport_socket,  # type: ignore[arg-type]
            node_id,
            self._on_request,
            self._on_reply,
            auth=Authenticator(config.cluster_key),
            max_in_flight=config.max_in_flight,
        )
        self._observed_host: str | None = None
        self._ready = trio.Event()
        self._unannounced: set[str] = set()
        self._wake_bootstrap = trio.lowlevel.ParkingLot()
        self._to_ping: dict[bytes, Contact] = {}
        self._wake_pinger = trio.lowlevel.ParkingLot()
        self._lookups = 0

    @classmethod
    @asynccontextmanager
    async def open(
        cls, config: NodeConfig, bootstrapper: Bootstrapper | None = None
    ) -> AsyncIterator[DhtNode]:
        host = await _numeric_host(config.bind_host)
        if config.node_id is not None:
            node_id = config.node_id
        elif config.data_dir is not None:
            node_id = load_or_create_node_id(config.data_dir)
        else:
            node_id = random_node_id()
        sock = open_udp_socket(host, config.bind_port)
        node = cls(config, node_id, sock, bootstrapper)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.transport.run)
                if bootstrapper is not None:
                    await nursery.start(bootstrapper.serve, lambda: node.address)
                nursery.start_soon(node._bootstrap_loop)
                nursery.start_soon(node._reprovide_loop)
                nursery.start_soon(node._expire_loop)
                nursery.start_soon(node._ping_loop)
                try:
                    yield node
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            node.transport.close()

    # -- public API -------------------------------------------------------------

    @property
    def address(self) -> Address:
        """The (host, UDP port) peers reach this node at."""
        return self._advertised_host(), self.transport.local_address[1]

    def ready(self) -> bool:
        return len(self.routing) > 0

    async def wait_ready(self) -> None:
        while not self.ready():
            await self._ready.wait()

    @property
    def stats(self) -> NodeStats:
        c = self.transport.counters
        return NodeStats(
            routing_table_size=len(self.routing),
            lookups=self._lookups,
            datagrams_in=c.datagrams_in,
            datagrams_out=c.datagrams_out,
            dropped_malformed=c.dropped_malformed,
            dropped_oversized=c.dropped_oversized,
            dropped_unauthenticated=c.dropped_unauthenticated,
            dropped_unsolicited=c.dropped_unsolicited,
            requests_sent=c.requests_sent,
            timeouts=c.timeouts,
            records_stored=len(self.store),
            keys_provided=len(self.schedule),
        )

    def peers(self) -> list[Contact]:
        return self.routing.contacts()

    async def provide(self, keys: Iterable[str]) -> None:
        """Announce keys now and keep re-providing them until withdrawn.

        Keys already provided are left to their schedule. Before the node is
        ready, keys are announced as soon as it is."""
        new = self.schedule.add(keys, trio.current_time())
        if not new:
            await trio.lowlevel.checkpoint()
            return
        if not self.ready():
            self._unannounced.update(new)
            self._wake_bootstrap.unpark_all()
            await trio.lowlevel.checkpoint()
            return
        await self._announce(new)

    async def withdraw(self, keys: Iterable[str]) -> None:
        """Stop re-providing keys; records already stored elsewhere lapse with their TTL."""
        self._unannounced.difference_update(self.schedule.remove(keys))
        await trio.lowlevel.checkpoint()

    async def get_providers(
        self, key: str, limit: int = 20, *, stats: LookupStats | None = None
    ) -> AsyncIterator[Provider]:
        """Providers of `key` as they are found, this node's own record first.

        Close the iterator when stopping early (`contextlib.aclosing`): that
        forgets the requests still in flight at once."""
        if limit < 1:
            raise ValueError("limit must be positive")
        kid = key_id(key)
        self._lookups += 1
        seen: set[bytes] = set()
        own = self._own_record(kid)
        local = self.store.get(kid, trio.current_time())
        for provider in ([own] if own else []) + local:
            if provider.node_id not in seen:
                seen.add(provider.node_id)
                yield provider
                if len(seen) >= limit:
                    return
        lookup = self._new_lookup(kid)
        batch = self.transport.batch()
        message = GetProviders(kid, min(limit, self.store.max_per_key))
        try:
            while (step := await self._step(lookup, batch, message)) is not None:
                contact, reply = step
                assert isinstance(reply, Providers)
                lookup.on_reply(contact.node_id, reply.contacts)
                if stats is not None:
                    stats.hops, stats.messages = lookup.hops, lookup.messages
                for provider in reply.providers:
                    if provider.node_id in seen:
                        continue
                    seen.add(provider.node_id)
                    yield provider
                    if len(seen) >= limit:
                        return
        finally:
            self._end_lookup(lookup, batch)
            if stats is not None:
                stats.hops, stats.messages = lookup.hops, lookup.messages

    async def find_node(self, target: bytes) -> list[Contact]:
        """The k closest live nodes to `target` (an iterative FIND_NODE)."""
        return (await self._find_node(target)).result()

    async def ping(self, address: Address) -> bool:
        reply = await self.transport.request(address, Ping(), self.config.request_timeout)
        return reply is not None

    # -- handlers called by the transport -----------------------------------------

    def _on_request(self, envelope: Envelope, host: str, port: int) -> Message | None:
        now = trio.current_time()
        self._observe(Contact(envelope.sender_id, host, port), now)
        return self.handler.handle(envelope, host, port, now)

    def _on_reply(self, envelope: Envelope, host: str, port: int) -> None:
        self._observe(Contact(envelope.sender_id, host, port), trio.current_time())
        message = envelope.message
        if isinstance(message, Pong):
            self._observed_host = message.observed_host

    def _observe(self, contact: Contact, now: float) -> None:
        questionable = self.routing.observe(contact, now)
        if questionable is not None and len(self._to_ping) < 64:
            self._to_ping[questionable.node_id] = questionable
            self._wake_pinger.unpark_all()
        if not self._ready.is_set() and len(self.routing):
            self._ready.set()

    def _failed(self, contact: Contact) -> None:
        self.routing.on_failure(contact.node_id)
        if not len(self.routing) and self._ready.is_set():
            self._ready = trio.Event()
            self._wake_bootstrap.unpark_all()

    def _advertised_host(self) -> str:
        if self.config.advertise_host:
            return self.config.advertise_host
        host = self.transport.local_address[0]
        if not is_wildcard(host):
            return host
        return self._observed_host or host

    def _own_record(self, kid: bytes) -> Provider | None:
        if not self.schedule.has_id(kid):
            return None
        host, port = self.address
        return Provider(self.node_id, host, port, self.config.registry_port)

    # -- lookups ------------------------------------------------------------------

    def _new_lookup(self, target: bytes) -> Lookup:
        k = self.config.k
        return Lookup(
            target,
            self.routing.closest(target, k),
            own_id=self.node_id,
            k=k,
            alpha=self.config.alpha,
        )

    async def _step(
        self, lookup: Lookup, batch: RequestBatch, message: Message
    ) -> tuple[Contact, Message] | None:
        """Send what the lookup asks for, then wait for the next reply; None when done."""
        timeout, stall = self.config.request_timeout, self.config.stall_timeout
        while True:
            for contact in lookup.next_requests():
                address = (contact.host, contact.port)
                if not await batch.send(address, message, timeout, contact, stall_after=stall):
                    lookup.on_failure(contact.node_id)
                    self._failed(contact)
            if lookup.done:
                return None
            if not batch.pending:
                continue  # every send failed: ask the lookup again
            tag, reply = await batch.next()
            assert isinstance(tag, Contact)
            if reply is None:
                lookup.on_failure(tag.node_id)
                self._failed(tag)
            elif reply is STALLED:
                lookup.on_stall(tag.node_id)
            else:
                assert isinstance(reply, Envelope)
                return tag, reply.message

    async def _find_node(self, target: bytes) -> Lookup:
        self._lookups += 1
        lookup = self._new_lookup(target)
        batch = self.transport.batch()
        message = FindNode(target)
        try:
            while (step := await self._step(lookup, batch, message)) is not None:
                contact, reply = step
                assert isinstance(reply, Nodes)
                lookup.on_reply(contact.node_id, reply.contacts)
        finally:
            self._end_lookup(lookup, batch)
        return lookup

    def _end_lookup(self, lookup: Lookup, batch: RequestBatch) -> None:
        # A lookup does not wait for stalled requests; it leaves them behind as
        # failures, or a dead node would never leave the table through lookups.
        for tag in batch.outstanding_tags():
            assert isinstance(tag, Contact)
            if lookup.state(tag.node_id) is State.STALLED:
                self._failed(tag)
        batch.close()

    # -- providing ----------------------------------------------------------------

    async def _announce(self, keys: Iterable[str]) -> None:
        """Store records for `keys` on the k nodes closest to each.

        Keys are sorted along the keyspace and grouped by a prefix long enough
        that a group's region holds at most about k nodes; one FIND_NODE lookup
        per group finds every node of the region and its surroundings, and each
        key goes to the k closest of those. Then each node gets its keys in as few ADD_PROVIDER
        datagrams as fit (up to MAX_KEYS_PER_ADD keys each).
        """
        k = self.config.k
        ids = sorted({key_id(key) for key in keys})
        if not ids:
            return
        size = self.routing.estimate_network_size()
        bits = max(0, math.ceil(math.log2(max(size / k, 1))))
        groups: dict[int, list[bytes]] = {}
        for kid in ids:
            groups.setdefault(id_to_int(kid) >> (ID_BITS - bits) if bits else 0, []).append(kid)
        plan: dict[bytes, tuple[Contact, list[bytes]]] = {}
        for group in groups.values():
            if len(group) == 1:
                target = group[0]
            else:
                target = int_to_id((id_to_int(group[0]) + id_to_int(group[-1])) // 2)
            lookup = await self._find_node(target)
            pool = [(id_to_int(c.node_id), c) for c in lookup.known()]
            for kid in group:
                t = id_to_int(kid)
                for _, contact in heapq.nsmallest(k, pool, key=lambda item: item[0] ^ t):
                    entry = plan.get(contact.node_id)
                    if entry is None:
                        plan[contact.node_id] = (contact, [kid])
                    else:
                        entry[1].append(kid)
        await self._send_add_provider(plan.values())

    async def _send_add_provider(self, plan: Iterable[tuple[Contact, list[bytes]]]) -> None:
        timeout = self.config.request_timeout
        window = min(32, self.config.max_in_flight)
        registry_port = self.config.registry_port
        batch = self.transport.batch()
        try:
            for contact, kids in plan:
                for start in range(0, len(kids), MAX_KEYS_PER_ADD):
                    while batch.pending >= window:
                        await self._settle_one(batch)
                    message = AddProvider(
                        registry_port, tuple(kids[start : start + MAX_KEYS_PER_ADD])
                    )
                    address = (contact.host, contact.port)
                    if not await batch.send(address, message, timeout, contact):
                        self._failed(contact)
            while batch.pending:
                await self._settle_one(batch)
        finally:
            batch.close()

    async def _settle_one(self, batch: RequestBatch) -> None:
        tag, reply = await batch.next()
        if reply is None:
            assert isinstance(tag, Contact)
            self._failed(tag)

    # -- background tasks -------------------------------------------------------------

    async def _reprovide_loop(self) -> None:
        tick = self.config.reprovide_interval / _TICKS_PER_INTERVAL
        await trio.sleep(tick * random.random())  # nodes started together do not tick together
        while True:
            await trio.sleep(tick)
            due = self.schedule.pop_due(trio.current_time())
            if not due:
                continue
            if self.ready():
                await self._announce(due)
            else:
                self._unannounced.update(due)

    async def _expire_loop(self) -> None:
        period = min(60.0, self.config.record_ttl / 4)
        while True:
            await trio.sleep(period)
            self.store.expire(trio.current_time())

    async def _ping_loop(self) -> None:
        while True:
            while not self._to_ping:
                await self._wake_pinger.park()
            node_id = next(iter(self._to_ping))
            contact = self._to_ping.pop(node_id)
            if not await self.ping((contact.host, contact.port)):
                self._failed(contact)

    async def _bootstrap_loop(self) -> None:
        config = self.config
        backoff = config.bootstrap_backoff
        last_refresh = trio.current_time()
        while True:
            if not self.ready():
                await self._bootstrap_once()
                if not self.ready():
                    await trio.sleep(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, config.bootstrap_backoff_max)
                    continue
                backoff = config.bootstrap_backoff
                last_refresh = trio.current_time()
            if self._unannounced:
                keys = [key for key in self._unannounced if key in self.schedule]
                self._unannounced.clear()
                await self._announce(keys)
            with trio.move_on_after(min(config.refresh_interval, 5.0)):
                await self._wake_bootstrap.park()
            now = trio.current_time()
            if self.ready() and now - last_refresh >= config.refresh_interval:
                last_refresh = now
                for index in self.routing.stale_buckets(now, config.refresh_interval):
                    await self._find_node(self.routing.random_id_in_bucket(index))

    async def _bootstrap_once(self) -> None:
        addresses: list[Address] = []
        if self.bootstrapper is not None:
            with trio.move_on_after(self.config.bootstrap_timeout):
                addresses = await self.bootstrapper.peers(self.address)
        own = {self.transport.local_address, self.address}
        addresses = [a for a in addresses if a not in own]
        if addresses:
            batch = self.transport.batch()
            try:
                for address in addresses:
                    await batch.send(address, Ping(), self.config.request_timeout)
                while batch.pending:
                    await batch.next()  # answers land in the routing table via _on_reply
            finally:
                batch.close()
        if not self.ready():
            return
        await self._find_node(self.node_id)
        if self.config.join_refresh:
            nearest = self.routing.closest(self.node_id, 1)
            if nearest:
                start = (id_to_int(nearest[0].node_id) ^ id_to_int(self.node_id)).bit_length()
                for index in range(start, ID_BITS):
                    await self._find_node(self.routing.random_id_in_bucket(index))


async def _numeric_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return host or "0.0.0.0"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_DGRAM)
        return str(infos[0][4][0])
