"""Outstanding requests: ids, reply matching, deadlines, stalls, the in-flight bound.

Pure: the caller passes `now` and the random source for request ids.

A `RequestBatch[T]` belongs to one operation (a lookup, an announce, a ping);
each request in it carries a tag of type T (usually the `Contact` asked), and
its outcome comes back to the batch's callback as a `Reply`, `TimedOut` or
`Stalled` (a soft deadline passed; the request stays outstanding and a reply
may still come). The `RequestTable` holds every request in flight across
batches and matches replies: same id, from the address the request went to,
of the type that answers it (or a RETRY: the request is sent again once, with
the cookie the RETRY carried). Requests beyond `max_in_flight` wait in a
queue and are sent as slots free up.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from .messages import (
    ADD_INFLIGHT,
    ADD_PROVIDER,
    ADD_PROVIDER_ACK,
    CLAIM,
    CLAIM_ANSWER,
    FIND_NODE,
    GET_PROVIDERS,
    NODES,
    PING,
    PONG,
    PROVIDERS,
    RELEASE,
    RELEASED,
    RETRY,
    Envelope,
    Message,
)

Address = tuple[str, int]
T = TypeVar("T")

REPLY_TO = {
    PING: PONG,
    FIND_NODE: NODES,
    ADD_PROVIDER: ADD_PROVIDER_ACK,
    GET_PROVIDERS: PROVIDERS,
    CLAIM: CLAIM_ANSWER,
    RELEASE: RELEASED,
    ADD_INFLIGHT: ADD_PROVIDER_ACK,
}
_REMEMBER = 4096  # requests given up on whose late replies are still recognised


@dataclass(frozen=True, slots=True)
class Reply(Generic[T]):
    tag: T
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class TimedOut(Generic[T]):
    """No reply by the deadline, or the request could not be sent."""

    tag: T


@dataclass(frozen=True, slots=True)
class Stalled(Generic[T]):
    tag: T


Outcome = Reply[T] | TimedOut[T] | Stalled[T]


class _Owner(Protocol):
    closed: bool
    timeout: float
    stall_after: float | None

    def _settle(self, request_id: int, envelope: Envelope | None, now: float) -> None: ...

    def _stall(self, request_id: int, now: float) -> None: ...

    def _rename(self, old: int, new: int) -> None: ...


@dataclass(slots=True)
class _Outstanding(Generic[T]):
    tag: T
    stalled: bool = False


class RequestBatch(Generic[T]):
    """The requests of one operation; outcomes go to `on_outcome` as they happen."""

    def __init__(
        self,
        on_outcome: Callable[[Outcome[T], float], None],
        timeout: float,
        stall_after: float | None = None,
    ) -> None:
        self._on_outcome = on_outcome
        self.timeout = timeout
        self.stall_after = stall_after
        self._outstanding: dict[int, _Outstanding[T]] = {}
        self.closed = False

    @property
    def pending(self) -> int:
        return len(self._outstanding)

    def tags(self) -> list[T]:
        return [entry.tag for entry in self._outstanding.values()]

    def _add(self, request_id: int, tag: T) -> None:
        self._outstanding[request_id] = _Outstanding(tag)

    def _settle(self, request_id: int, envelope: Envelope | None, now: float) -> None:
        entry = self._outstanding.pop(request_id, None)
        if entry is None or self.closed:
            return
        if envelope is None:
            self._on_outcome(TimedOut(entry.tag), now)
        else:
            self._on_outcome(Reply(entry.tag, envelope), now)

    def _rename(self, old: int, new: int) -> None:
        entry = self._outstanding.pop(old, None)
        if entry is not None:
            self._outstanding[new] = entry

    def _stall(self, request_id: int, now: float) -> None:
        entry = self._outstanding.get(request_id)
        if entry is None or entry.stalled or self.closed:
            return
        entry.stalled = True
        self._on_outcome(Stalled(entry.tag), now)


@dataclass(slots=True)
class PendingRequest:
    request_id: int
    address: Address
    message: Message
    deadline: float
    stall_at: float  # inf when there is no soft deadline, or once it was reported
    batch: _Owner
    retried: bool

    @property
    def reply_type(self) -> int:
        return REPLY_TO[self.message.TYPE]


@dataclass(frozen=True, slots=True)
class _Queued:
    request_id: int
    address: Address
    message: Message
    batch: _Owner
    retried: bool = False


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A request to put on the wire now."""

    request_id: int
    address: Address
    message: Message


class Match(enum.Enum):
    DELIVERED = "delivered"
    LATE = "late"  # answers a request given up on: proves the peer alive, delivered to nobody
    UNSOLICITED = "unsolicited"


@dataclass(slots=True)
class RequestCounters:
    timeouts: int = 0
    late_replies: int = 0


class RequestTable:
    def __init__(
        self, ids: random.Random, *, max_in_flight: int = 256, remember: int = _REMEMBER
    ) -> None:
        self._ids = ids
        self.max_in_flight = max_in_flight
        self._remember = remember
        self._pending: dict[int, PendingRequest] = {}
        self._queue: deque[_Queued] = deque()
        self._recent: dict[int, tuple[Address, int]] = {}  # oldest first
        self._timers: list[tuple[float, int]] = []  # (when, request id), lazily pruned
        self.counters = RequestCounters()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _new_id(self) -> int:
        request_id = self._ids.getrandbits(64)
        while request_id in self._pending or request_id in self._recent:
            request_id = self._ids.getrandbits(64)
        return request_id

    def request(self, batch: RequestBatch[T], address: Address, message: Message, tag: T) -> None:
        """Queue a request; `dispatch` hands it out once a slot is free."""
        request_id = self._new_id()
        batch._add(request_id, tag)
        self._queue.append(_Queued(request_id, address, message, batch))

    def dispatch(self, now: float) -> list[Outgoing]:
        """Queued requests that now have a slot, registered as in flight from `now`."""
        out: list[Outgoing] = []
        while self._queue and len(self._pending) < self.max_in_flight:
            queued = self._queue.popleft()
            batch = queued.batch
            if batch.closed:
                continue
            deadline = now + batch.timeout
            stall = batch.stall_after
            stall_at = now + stall if stall is not None and stall < batch.timeout else math.inf
            request_id = queued.request_id
            self._pending[request_id] = PendingRequest(
                request_id,
                queued.address,
                queued.message,
                deadline,
                stall_at,
                batch,
                queued.retried,
            )
            heapq.heappush(self._timers, (deadline, request_id))
            if stall_at < math.inf:
                heapq.heappush(self._timers, (stall_at, request_id))
            out.append(Outgoing(request_id, queued.address, queued.message))
        return out

    def match(self, envelope: Envelope, source: Address) -> PendingRequest | Match:
        """The request a reply answers (taken off the table), or why it answers none."""
        request_id = envelope.request_id
        pending = self._pending.get(request_id)
        if pending is not None:
            expected: tuple[Address, int] | None = (pending.address, pending.reply_type)
        else:
            expected = self._recent.get(request_id)
        kind = envelope.message.TYPE
        if expected is None or expected[0] != source or kind not in (expected[1], RETRY):
            return Match.UNSOLICITED
        if pending is None:
            del self._recent[request_id]
            self.counters.late_replies += 1
            return Match.LATE
        del self._pending[request_id]
        return pending

    @staticmethod
    def deliver(pending: PendingRequest, envelope: Envelope, now: float) -> None:
        pending.batch._settle(pending.request_id, envelope, now)

    def retry(self, pending: PendingRequest, now: float) -> None:
        """The destination answered RETRY: send the request again under a new id,
        first in the queue; a second RETRY counts as no answer."""
        batch = pending.batch
        if pending.retried or batch.closed:
            batch._settle(pending.request_id, None, now)
            return
        request_id = self._new_id()
        batch._rename(pending.request_id, request_id)
        queued = _Queued(request_id, pending.address, pending.message, batch, retried=True)
        self._queue.appendleft(queued)

    def fail(self, request_id: int, now: float) -> None:
        """The request could not be sent: its batch hears of it as timed out."""
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.batch._settle(request_id, None, now)

    def expire(self, now: float) -> None:
        """Report the deadlines and soft deadlines that passed by `now`."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, request_id = heapq.heappop(timers)
            pending = self._pending.get(request_id)
            if pending is None:
                continue
            if pending.deadline <= now:
                self._give_up(request_id)
                self.counters.timeouts += 1
                pending.batch._settle(request_id, None, now)
            elif pending.stall_at <= now:
                pending.stall_at = math.inf
                pending.batch._stall(request_id, now)

    def next_deadline(self) -> float:
        timers = self._timers
        while timers:
            when, request_id = timers[0]
            pending = self._pending.get(request_id)
            if pending is not None and when in (pending.deadline, pending.stall_at):
                return when
            heapq.heappop(timers)
        return math.inf

    def close(self, batch: RequestBatch[T]) -> None:
        """Forget a batch's requests; replies to those already sent count as late."""
        batch.closed = True
        for request_id in batch._outstanding:
            if request_id in self._pending:
                self._give_up(request_id)
        batch._outstanding.clear()

    def _give_up(self, request_id: int) -> None:
        pending = self._pending.pop(request_id)
        if len(self._recent) >= self._remember:
            del self._recent[next(iter(self._recent))]
        self._recent[request_id] = (pending.address, pending.reply_type)
