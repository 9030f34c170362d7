"""What a node does over several round trips, as state machines fed outcomes. Pure.

Each operation owns one `RequestBatch` at a time and talks to the node core
through the small `OperationHost` seam; it never sees the clock or the socket.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from .announce import Group, Plan, group_keys
from .claims import Claim, ClaimAnswer, Lost, Refused, Won
from .ids import ID_BITS, id_to_int
from .lookup import Lookup, State
from .messages import (
    CLAIM_LOST,
    CLAIM_WON,
    AddInflight,
    AddProvider,
    ClaimReply,
    ClaimRequest,
    Contact,
    FindNode,
    GetProviders,
    Nodes,
    Ping,
    Provider,
    Providers,
    Release,
    Released,
)
from .requests import Address, Outcome, Reply, RequestBatch, Stalled, TimedOut

T = TypeVar("T")

# Providers one lookup yields per host: a few instances may share a host, a crowd of
# ids there is one machine pretending to be many (it must not fill the limit).
MAX_PROVIDERS_PER_HOST = 4

# Where this node is reached: (host, UDP port, registry port), as messages carry it.
Origin = tuple[str, int, int]


class OperationHost(Protocol):
    k: int
    rng: random.Random

    def batch(
        self, on_outcome: Callable[[Outcome[T], float], None], *, stall: bool = False
    ) -> RequestBatch[T]: ...

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
    ) -> None: ...

    def close(self, batch: RequestBatch[T]) -> None: ...

    def failed(self, contact: Contact, now: float) -> None: ...

    def new_lookup(self, target: bytes) -> Lookup: ...

    def finished(self, op: Operation, now: float) -> None: ...

    def progress(self, op: Operation) -> None: ...

    def ready(self) -> bool: ...

    def own_id(self) -> bytes: ...

    def routing_closest(self, target: bytes, count: int) -> list[Contact]: ...

    def random_id_in_bucket(self, index: int) -> bytes: ...

    def network_size(self) -> int: ...

    def origin(self) -> Origin: ...


class Operation:
    def __init__(self, host: OperationHost, op_id: int) -> None:
        self.host = host
        self.id = op_id
        self.done = False
        self.listeners: list[Callable[[Operation, float], None]] = []

    def start(self, now: float) -> None:
        raise NotImplementedError

    def cancel(self, now: float) -> None:
        raise NotImplementedError

    def _finish(self, now: float) -> None:
        self.done = True
        self.host.progress(self)
        self.host.finished(self, now)
        for listener in self.listeners:
            listener(self, now)


class LookupOp(Operation):
    """An iterative FIND_NODE or GET_PROVIDERS lookup.

    For GET_PROVIDERS, providers found are buffered for the caller; while
    some wait to be taken, no new request goes out (the caller may stop).
    The limit counts distinct hosts, so that many node ids on one machine
    cannot fill it: no host yields more than `MAX_PROVIDERS_PER_HOST`
    providers, and a second node id at the address (host and registry port)
    of one already yielded is passed over."""

    def __init__(
        self,
        host: OperationHost,
        op_id: int,
        target: bytes,
        message: FindNode | GetProviders,
        *,
        limit: int | None = None,
        seen: Iterable[bytes] = (),
    ) -> None:
        super().__init__(host, op_id)
        self.lookup = host.new_lookup(target)
        self.message = message
        self.limit = limit
        self.seen = set(seen)
        self._fetching: set[bytes] = set()  # node ids seen only as in-flight providers
        self._places: dict[tuple[str, int], bytes] = {}  # (host, registry port) -> node id
        self._per_host: dict[str, int] = {}
        self.found: list[Provider] = []
        self._held = False
        self._batch: RequestBatch[Contact] = host.batch(self._on_outcome, stall=True)

    def start(self, now: float) -> None:
        self._advance(now)

    def take(self) -> list[Provider]:
        """Providers found since the last call; the lookup waits until `resume`."""
        found, self.found = self.found, []
        self._held = bool(found)
        return found

    def resume(self, now: float) -> None:
        self._held = False
        self._advance(now)

    def _on_outcome(self, outcome: Outcome[Contact], now: float) -> None:
        lookup = self.lookup
        if isinstance(outcome, Reply):
            message = outcome.envelope.message
            if isinstance(message, Providers):
                lookup.on_reply(outcome.tag.node_id, message.contacts)
                self._found(message.providers)
            elif isinstance(message, Nodes):
                lookup.on_reply(outcome.tag.node_id, message.contacts)
        elif isinstance(outcome, TimedOut):
            lookup.on_failure(outcome.tag.node_id)
            self.host.failed(outcome.tag, now)
        else:
            lookup.on_stall(outcome.tag.node_id)
        self._advance(now)

    def _found(self, providers: Iterable[Provider]) -> None:
        """Buffer providers not seen yet (by node id). A node seen only in flight
        comes again when a complete record of it turns up (it counts once)."""
        seen, fetching = self.seen, self._fetching
        for provider in providers:
            node_id = provider.node_id
            if node_id in seen:
                continue
            if node_id in fetching:
                if not provider.inflight:
                    fetching.discard(node_id)
                    seen.add(node_id)
                    self.found.append(provider)
                continue
            if not self._new_place(provider):
                continue
            (fetching if provider.inflight else seen).add(node_id)
            self.found.append(provider)
        if self.found:
            self.host.progress(self)

    def _full(self) -> bool:
        return self.limit is not None and len(self._per_host) >= self.limit

    def _new_place(self, provider: Provider) -> bool:
        """Take the provider's place (address), unless another node id holds it or
        its host has given its share."""
        place = (provider.host, provider.registry_port)
        if place in self._places:
            return False
        count = self._per_host.get(provider.host, 0)
        if count >= MAX_PROVIDERS_PER_HOST or (count == 0 and self._full()):
            return False
        self._places[place] = provider.node_id
        self._per_host[provider.host] = count + 1
        return True

    def _advance(self, now: float) -> None:
        if self.done:
            return
        if self._full():
            self._end(now)
            return
        if self.found or self._held:
            return
        for contact in self.lookup.next_requests():
            self.host.send(self._batch, (contact.host, contact.port), self.message, contact)
        if self.lookup.done:
            self._end(now)

    def cancel(self, now: float) -> None:
        if not self.done:
            self._end(now)

    def _end(self, now: float) -> None:
        # A lookup does not wait for stalled requests; it leaves them behind as
        # failures, or a dead node would never leave the table through lookups.
        for contact in self._batch.tags():
            if self.lookup.state(contact.node_id) is State.STALLED:
                self.host.failed(contact, now)
        self.host.close(self._batch)
        self._finish(now)

    def result(self) -> list[Contact]:
        return self.lookup.result()


class PingOp(Operation):
    """One PING; with a contact, a failure to answer counts against it."""

    def __init__(
        self, host: OperationHost, op_id: int, address: Address, contact: Contact | None = None
    ) -> None:
        super().__init__(host, op_id)
        self.address = address
        self.contact = contact
        self.answered = False
        self._batch: RequestBatch[Contact | None] = host.batch(self._on_outcome)

    def start(self, now: float) -> None:
        self.host.send(self._batch, self.address, Ping(), self.contact)

    def _on_outcome(self, outcome: Outcome[Contact | None], now: float) -> None:
        if isinstance(outcome, Stalled):
            return
        self.answered = isinstance(outcome, Reply)
        if not self.answered and outcome.tag is not None:
            self.host.failed(outcome.tag, now)
        self.cancel(now)

    def cancel(self, now: float) -> None:
        if not self.done:
            self.host.close(self._batch)
            self._finish(now)


class SequenceOp(Operation):
    """Operations run one after another; `next_op` makes each when its turn comes."""

    def __init__(
        self, host: OperationHost, op_id: int, steps: list[Callable[[], Operation | None]]
    ) -> None:
        super().__init__(host, op_id)
        self._steps = steps
        self._current: Operation | None = None
        self._starting = False

    def start(self, now: float) -> None:
        self._next(now)

    def _next(self, now: float) -> None:
        while self._steps and not self.done:
            op = self._steps.pop(0)()
            if op is None:
                continue
            self._current = op
            op.listeners.append(self._step_done)
            self._starting = True
            op.start(now)
            self._starting = False
            if not op.done:
                return
        if not self.done:
            self._current = None
            self._finish(now)

    def _step_done(self, op: Operation, now: float) -> None:
        if op is self._current and not self._starting:
            self._current = None
            self._next(now)

    def add(self, step: Callable[[], Operation | None]) -> None:
        self._steps.append(step)

    def cancel(self, now: float) -> None:
        if not self.done:
            self._steps.clear()
            if self._current is not None:
                current, self._current = self._current, None
                current.cancel(now)
            self._finish(now)


class AddProvidersOp(Operation):
    """Send ADD_PROVIDER datagrams with a bounded window of requests in flight."""

    def __init__(
        self,
        host: OperationHost,
        op_id: int,
        messages: list[tuple[Contact, AddProvider]] | list[tuple[Contact, AddInflight]],
        window: int,
    ) -> None:
        super().__init__(host, op_id)
        self._messages: list[tuple[Contact, AddProvider | AddInflight]] = list(messages)
        self._window = window
        self._batch: RequestBatch[Contact] = host.batch(self._on_outcome)

    def start(self, now: float) -> None:
        self._fill(now)

    def _fill(self, now: float) -> None:
        while self._messages and self._batch.pending < self._window:
            contact, message = self._messages.pop(0)
            self.host.send(self._batch, (contact.host, contact.port), message, contact)
        if not self._messages and not self._batch.pending:
            self.cancel(now)

    def _on_outcome(self, outcome: Outcome[Contact], now: float) -> None:
        if isinstance(outcome, TimedOut):
            self.host.failed(outcome.tag, now)
        self._fill(now)

    def cancel(self, now: float) -> None:
        if not self.done:
            self.host.close(self._batch)
            self._finish(now)


def announce(
    host: OperationHost,
    new_id: Callable[[], int],
    key_ids: Iterable[bytes],
    window: int,
) -> SequenceOp:
    """Store records for `key_ids` on the k nodes closest to each (see `announce.py`)."""
    k = host.k
    groups = group_keys(key_ids, host.network_size(), k)
    plan = Plan()

    def lookup_step(group: Group) -> Callable[[], Operation]:
        def make() -> Operation:
            op = LookupOp(host, new_id(), group.target, FindNode(group.target))
            op.listeners.append(lambda done, now: plan.assign(group, op.lookup.known(), k))
            return op

        return make

    steps: list[Callable[[], Operation | None]] = [lookup_step(g) for g in groups]
    sequence = SequenceOp(host, new_id(), steps)

    def send_step() -> Operation | None:
        messages = plan.messages(host.origin())  # the address as known now, after the lookups
        return AddProvidersOp(host, new_id(), messages, window) if messages else None

    if groups:
        sequence.add(send_step)
    return sequence


def announce_inflight(
    host: OperationHost,
    new_id: Callable[[], int],
    key: bytes,
    done: int,
    total: int,
    *,
    holders: list[Contact] | None = None,
    on_holders: Callable[[list[Contact]], None] | None = None,
) -> Operation | None:
    """Store an in-flight record on the k closest nodes to its key that answer a lookup;
    with `holders` (those a lookup found for the last announce) on them, without one.
    `on_holders` is told the nodes a lookup found."""
    message = AddInflight(key, *host.origin(), done, total)

    def store_on(contacts: list[Contact]) -> Operation | None:
        messages = [(contact, message) for contact in contacts]
        return AddProvidersOp(host, new_id(), messages, len(messages)) if messages else None

    if holders is not None:
        return store_on(holders)
    lookup = LookupOp(host, new_id(), key, FindNode(key))

    def send_step() -> Operation | None:
        closest = lookup.result()[: host.k]
        if on_holders is not None:
            on_holders(closest)
        return store_on(closest)

    return SequenceOp(host, new_id(), [lambda: lookup, send_step])


def find_nodes(host: OperationHost, new_id: Callable[[], int], targets: list[bytes]) -> SequenceOp:
    def step(target: bytes) -> Callable[[], Operation]:
        return lambda: LookupOp(host, new_id(), target, FindNode(target))

    return SequenceOp(host, new_id(), [step(t) for t in targets])


def bootstrap(
    host: OperationHost,
    new_id: Callable[[], int],
    addresses: list[Address],
    join_refresh: bool,
) -> SequenceOp:
    """Ping every address; once the table holds someone, look ourselves up, then
    look up a random id in each bucket farther than our nearest neighbour."""
    own = host.own_id()

    def self_lookup() -> Operation | None:
        if not host.ready():
            return None
        return LookupOp(host, new_id(), own, FindNode(own))

    def join() -> Operation | None:
        if not host.ready() or not join_refresh:
            return None
        nearest = host.routing_closest(own, 1)
        if not nearest:
            return None
        start = (id_to_int(nearest[0].node_id) ^ id_to_int(own)).bit_length()
        ids = [host.random_id_in_bucket(index) for index in range(start, ID_BITS)]
        return find_nodes(host, new_id, ids)

    steps: list[Callable[[], Operation | None]] = [
        lambda: PingAll(host, new_id(), addresses) if addresses else None,
        self_lookup,
        join,
    ]
    return SequenceOp(host, new_id(), steps)


class PingAll(Operation):
    """Ping several addresses at once; done when each answered or timed out."""

    def __init__(self, host: OperationHost, op_id: int, addresses: list[Address]) -> None:
        super().__init__(host, op_id)
        self._addresses = addresses
        self._batch: RequestBatch[Address] = host.batch(self._on_outcome)

    def start(self, now: float) -> None:
        for address in self._addresses:
            self.host.send(self._batch, address, Ping(), address)

    def _on_outcome(self, outcome: Outcome[Address], now: float) -> None:
        if not self._batch.pending:
            self.cancel(now)

    def cancel(self, now: float) -> None:
        if not self.done:
            self.host.close(self._batch)
            self._finish(now)


# The arbiter's answer, as an operation sees it: a claim answer, or whether a release took.
Arbitrated = ClaimAnswer | bool


def claim_answer(key: bytes, reply: ClaimReply, now: float) -> ClaimAnswer:
    """A CLAIM_ANSWER on the claimant's clock: the lease ends `remaining` from now."""
    if reply.holder is None or reply.status not in (CLAIM_WON, CLAIM_LOST):
        return Refused("refused by the arbiter")
    claim = Claim(key, reply.holder, now + reply.remaining)
    return Won(claim) if reply.status == CLAIM_WON else Lost(claim)


class ArbiterOp(Operation):
    """Ask the arbiter of `key`: the closest node to it that answers.

    Without `candidates`, a FIND_NODE lookup of the key finds the k closest
    live nodes first. Candidates are tried closest first, this node among
    them: when it is the closest, `local(now)` answers at once; a candidate
    that times out is passed over for the next. `answer` is the first answer
    (None if nobody answered), `arbiters` the candidates from the one that
    answered on (so a release goes to the same arbiter), `None` meaning this
    node. `message()` makes the request when it is sent (it names this node's
    address as known then)."""

    def __init__(
        self,
        host: OperationHost,
        op_id: int,
        key: bytes,
        message: Callable[[], ClaimRequest | Release],
        local: Callable[[float], Arbitrated],
        candidates: list[Contact | None] | None = None,
    ) -> None:
        super().__init__(host, op_id)
        self.key = key
        self.message = message
        self._local = local
        self.answer: Arbitrated | None = None
        self.arbiters: list[Contact | None] = []
        self._candidates = candidates
        self._lookup: LookupOp | None = None
        self._batch: RequestBatch[Contact] = host.batch(self._on_outcome)

    def start(self, now: float) -> None:
        if self._candidates is not None:
            self._ask(now)
            return
        op = LookupOp(self.host, self.id, self.key, FindNode(self.key))
        self._lookup = op
        op.listeners.append(self._found)
        op.start(now)

    def _found(self, op: Operation, now: float) -> None:
        if self.done or op is not self._lookup:
            return
        self._lookup = None
        # Every candidate not known dead, answered or merely slow: a lookup passes over
        # a node slower than its stall deadline, but an arbiter chosen that way depends
        # on who was slow for whom, and two claimants could both win at different ones.
        # A slow arbiter is asked anyway; only a timeout passes it over.
        contacts: list[Contact | None] = []
        if isinstance(op, LookupOp):
            contacts = list(op.lookup.known()[: op.lookup.k])
        key = id_to_int(self.key)
        own = self.host.own_id()
        contacts.append(None)  # this node
        contacts.sort(key=lambda c: id_to_int(own if c is None else c.node_id) ^ key)
        self._candidates = contacts
        self._ask(now)

    def _ask(self, now: float) -> None:
        candidates = self._candidates or []
        if not candidates:
            self._end(now)
            return
        arbiter = candidates[0]
        if arbiter is None:
            self.arbiters = list(candidates)
            self.answer = self._local(now)
            self._end(now)
            return
        self.host.send(self._batch, (arbiter.host, arbiter.port), self.message(), arbiter)

    def _on_outcome(self, outcome: Outcome[Contact], now: float) -> None:
        if self.done or isinstance(outcome, Stalled):
            return
        candidates = self._candidates or []
        if isinstance(outcome, TimedOut):
            self.host.failed(outcome.tag, now)
            del candidates[:1]
            self._ask(now)
            return
        message = outcome.envelope.message
        self.arbiters = list(candidates)
        if isinstance(message, ClaimReply):
            self.answer = claim_answer(self.key, message, now)
        elif isinstance(message, Released):
            self.answer = message.released
        self._end(now)

    def cancel(self, now: float) -> None:
        if not self.done:
            if self._lookup is not None:
                lookup, self._lookup = self._lookup, None
                lookup.cancel(now)
            self._end(now)

    def _end(self, now: float) -> None:
        self.host.close(self._batch)
        self._finish(now)
