"""DhtNode: the Trio shell around the node core (`core.py`).

Lifetimes: `DhtNode.open()` owns one nursery holding the receive loop, the
timer loop, the peer-fetching task (the bootstrapper's I/O) and the socket's
flush task. Leaving the `async with` cancels them all and closes the socket.
Every decision is the core's; the shell feeds it datagrams and the time, and
executes the commands it returns. The public async API starts an operation in
the core and waits for its `Progress`.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import trio

from .bootstrap import Address, Bootstrapper
from .claims import ClaimAnswer, Refused
from .config import LookupStats, NodeConfig, NodeStats
from .core import Command, FetchPeers, NodeCore, Progress, Ready, Send, WakeAt
from .identity import load_or_create_node_id, random_node_id
from .messages import Contact, Provider
from .operations import LookupOp, Operation
from .transport import UdpSocket, canonical_host, open_udp_socket

__all__ = ["DhtNode", "LookupStats", "NodeConfig", "NodeStats"]

_BURST = 32  # datagrams handled back to back before letting other tasks run


class DhtNode:
    def __init__(
        self, config: NodeConfig, core: NodeCore, udp: UdpSocket, bootstrapper: Bootstrapper | None
    ) -> None:
        self.config = config
        self.core = core
        self.node_id = core.node_id
        self.udp = udp
        self.bootstrapper = bootstrapper
        self._ready = trio.Event()
        self._waiters: dict[int, trio.Event] = {}
        self._fetch = trio.Event()
        self._wake_at = float("inf")
        self._timer: trio.CancelScope | None = None
        self._execute()  # the core's first WakeAt

    @classmethod
    @asynccontextmanager
    async def open(
        cls, config: NodeConfig, bootstrapper: Bootstrapper | None = None
    ) -> AsyncIterator[DhtNode]:
        host = await _numeric_host(config.bind_host)
        if config.node_id is not None:
            node_id = config.node_id
        elif config.data_dir is not None:
            node_id = await trio.to_thread.run_sync(load_or_create_node_id, config.data_dir)
        else:
            node_id = random_node_id()
        udp = UdpSocket(open_udp_socket(host, config.bind_port))
        try:
            core = NodeCore(
                config,
                node_id,
                udp.local_address,
                trio.current_time(),
                rng=random.Random(random_node_id()),
                # Request ids, nonces and cookie secrets must not be guessable.
                ids=random.SystemRandom(),
                clock_offset=_clock_offset(),
            )
            node = cls(config, core, udp, bootstrapper)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node._receive_loop)
                nursery.start_soon(udp.flush_loop)
                if bootstrapper is not None:
                    await nursery.start(bootstrapper.serve, lambda: node.address)
                nursery.start_soon(node._timer_loop)
                nursery.start_soon(node._peer_loop)
                try:
                    yield node
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            udp.close()

    # -- public API -------------------------------------------------------------

    @property
    def address(self) -> Address:
        """The (host, UDP port) peers reach this node at."""
        return self.core.address

    def ready(self) -> bool:
        return self.core.ready()

    async def wait_ready(self) -> None:
        while not self.ready():
            await self._ready.wait()

    @property
    def stats(self) -> NodeStats:
        c, s, core = self.core.counters, self.udp.counters, self.core
        return NodeStats(
            routing_table_size=len(core.routing),
            lookups=core.lookups,
            datagrams_in=c.datagrams_in,
            datagrams_out=s.datagrams_out,
            dropped_malformed=c.dropped_malformed,
            dropped_oversized=c.dropped_oversized,
            dropped_unauthenticated=c.dropped_unauthenticated,
            dropped_replayed=c.dropped_replayed,
            dropped_stale=c.dropped_stale,
            dropped_unsolicited=c.dropped_unsolicited,
            dropped_unverified=c.dropped_unverified,
            requests_sent=c.requests_sent,
            timeouts=core.table.counters.timeouts,
            records_stored=len(core.store),
            keys_provided=len(core.schedule),
        )

    def peers(self) -> list[Contact]:
        return self.core.routing.contacts()

    async def provide(self, keys: Iterable[str]) -> None:
        """Announce keys now and keep re-providing them until withdrawn.

        Keys already provided are left to their schedule. Before the node is
        ready, keys are announced as soon as it is."""
        op = self.core.provide(keys, trio.current_time())
        self._execute()
        if op is None:
            await trio.lowlevel.checkpoint()
            return
        await self._until_done(op)

    async def provide_inflight(self, key: str, done: int, total: int) -> None:
        """Announce that this node is fetching `key`: `done` of `total` bytes so far.

        Holders keep the in-flight record `config.inflight_ttl` (30 s) and
        `get_providers` yields it with `progress` set (complete holders first in
        each answer), so a caller can stream from it or prefer a complete
        holder. Call again as the download grows; on commit call `provide`,
        whose complete records replace the in-flight ones; on abort
        `withdraw_inflight`."""
        op = self.core.provide_inflight(key, done, total, trio.current_time())
        self._execute()
        if op is None:
            await trio.lowlevel.checkpoint()
            return
        await self._until_done(op)

    async def withdraw_inflight(self, keys: Iterable[str]) -> None:
        """Stop naming this node as fetching `keys`; records elsewhere lapse within inflight_ttl."""
        self.core.withdraw_inflight(keys)
        await trio.lowlevel.checkpoint()

    async def withdraw(self, keys: Iterable[str]) -> None:
        """Stop re-providing keys; records already stored elsewhere lapse with their TTL."""
        self.core.withdraw(keys)
        await trio.lowlevel.checkpoint()

    async def get_providers(
        self, key: str, limit: int = 20, *, stats: LookupStats | None = None
    ) -> AsyncIterator[Provider]:
        """Providers of `key` as they are found, this node's own record first.

        Close the iterator when stopping early (`contextlib.aclosing`): that
        forgets the requests still in flight at once."""
        if limit < 1:
            raise ValueError("limit must be positive")
        op = self.core.get_providers(key, limit, trio.current_time())
        self._execute()
        try:
            while True:
                for provider in op.take():
                    yield provider
                self.core.resume(op, trio.current_time())
                self._execute()
                _copy_stats(op, stats)
                if op.done and not op.found:
                    return
                if not op.found:
                    await self._progress(op)
        finally:
            self._cancel(op)
            _copy_stats(op, stats)

    async def claim(self, key: str, lease: float) -> ClaimAnswer:
        """Claim `key` for `lease` seconds (capped at 30) at its arbiter, the closest
        node to it that answers: `Won` (the claim is ours until `claim.expires`, on
        this node's clock), `Lost` (`claim.holder` holds it: fetch from them) or
        `Refused`. Claiming again renews; a claim neither renewed nor released
        lapses with its lease."""
        op = self.core.claim(key, lease, trio.current_time())
        self._execute()
        await self._until_done(op)
        answer = op.answer
        if isinstance(answer, bool) or answer is None:
            return Refused("no arbiter answered")
        return answer

    async def release(self, key: str) -> None:
        """Give a claim up, best effort, at the arbiter the last claim reached."""
        op = self.core.release(key, trio.current_time())
        self._execute()
        await self._until_done(op)

    async def find_node(self, target: bytes) -> list[Contact]:
        """The k closest live nodes to `target` (an iterative FIND_NODE)."""
        op = self.core.find_node(target, trio.current_time())
        self._execute()
        await self._until_done(op)
        return op.result()

    async def ping(self, address: Address) -> bool:
        op = self.core.ping(address, trio.current_time())
        self._execute()
        await self._until_done(op)
        return op.answered

    # -- the shell ------------------------------------------------------------------

    def _execute(self) -> None:
        for command in self.core.take_commands():
            self._run(command)

    def _run(self, command: Command) -> None:
        if isinstance(command, Send):
            if command.request_id is None:
                self.udp.send_reply(command.address, command.data)
            elif not self.udp.send_request(command.address, command.data):
                self.core.send_failed(command.request_id, trio.current_time())
        elif isinstance(command, Progress):
            waiter = self._waiters.get(command.op_id)
            if waiter is not None:
                waiter.set()
        elif isinstance(command, WakeAt):
            self._wake_at = command.when
            if self._timer is not None:
                self._timer.deadline = command.when
        elif isinstance(command, Ready):
            self._on_ready(command.ready)
        elif isinstance(command, FetchPeers):
            self._fetch.set()

    def _on_ready(self, ready: bool) -> None:
        if ready:
            self._ready.set()
        elif self._ready.is_set():
            self._ready = trio.Event()

    async def _progress(self, op: Operation) -> None:
        event = self._waiters[op.id] = trio.Event()
        try:
            await event.wait()
        finally:
            del self._waiters[op.id]

    async def _until_done(self, op: Operation) -> None:
        try:
            while not op.done:
                await self._progress(op)
        finally:
            self._cancel(op)

    def _cancel(self, op: Operation) -> None:
        if not op.done:
            self.core.cancel(op, trio.current_time())
            self._execute()

    async def _receive_loop(self) -> None:
        udp, core = self.udp, self.core
        burst = 0
        while True:
            received = udp.receive_now()
            if received is None:
                burst = 0
                await trio.lowlevel.wait_readable(udp.sock)
                continue
            data, (host, port) = received
            core.receive(data, canonical_host(host), port, trio.current_time())
            self._execute()
            burst += 1
            if burst >= _BURST:
                burst = 0
                await trio.lowlevel.checkpoint()

    async def _timer_loop(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._wake_at) as scope:
                self._timer = scope
                await trio.sleep_forever()
            self._timer = None
            # The wall clock seals are stamped with: follow its steps (the core
            # ticks every few seconds at least).
            self.core.clock_offset = _clock_offset()
            self.core.tick(trio.current_time())
            self._execute()

    async def _peer_loop(self) -> None:
        while True:
            await self._fetch.wait()
            self._fetch = trio.Event()
            addresses: list[Address] = []
            if self.bootstrapper is not None:
                with trio.move_on_after(self.config.bootstrap_timeout):
                    addresses = await self.bootstrapper.peers(self.address)
            self.core.bootstrap(addresses, trio.current_time())
            self._execute()


def _clock_offset() -> float:
    return time.time() - trio.current_time()


def _copy_stats(op: LookupOp, stats: LookupStats | None) -> None:
    if stats is not None:
        stats.hops, stats.messages = op.lookup.hops, op.lookup.messages


async def _numeric_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return host or "0.0.0.0"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_DGRAM)
        return str(infos[0][4][0])
