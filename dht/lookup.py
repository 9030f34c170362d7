"""The iterative lookup as a sans-I/O state machine.

The driver asks `next_requests()` for contacts to query, sends them, and feeds
each outcome back with `on_reply` or `on_failure`, then asks again at once: a
new request goes out as soon as any reply arrives, never in lockstep rounds,
with at most `alpha` requests in flight.

Each candidate moves FRESH -> WAITING -> SUCCEEDED | FAILED, possibly through
STALLED: a request slower than a soft deadline (a dead or overloaded node)
stops counting against `alpha` and is passed over when deciding which are the
k closest, but a late reply is still taken. The lookup is done when none of
the `k` closest candidates that are neither failed nor stalled is FRESH and
no request is in flight.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .ids import id_to_int
from .messages import Contact


class State(enum.Enum):
    FRESH = "fresh"
    WAITING = "waiting"
    STALLED = "stalled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(slots=True)
class _Candidate:
    contact: Contact
    distance: int
    depth: int  # 1 for contacts from our own table, n + 1 for contacts a depth-n node told us of
    state: State = State.FRESH


class Lookup:
    def __init__(
        self,
        target: bytes,
        seeds: Iterable[Contact],
        *,
        own_id: bytes,
        k: int = 20,
        alpha: int = 3,
    ) -> None:
        self.target = target
        self.k = k
        self.alpha = alpha
        self._t = id_to_int(target)
        self._own_id = own_id
        self._candidates: dict[bytes, _Candidate] = {}
        self._order: list[tuple[int, bytes]] = []  # (distance, node id), closest first
        self.in_flight = 0
        self.messages = 0
        self.hops = 0
        self._add(seeds, 1)

    def _add(self, contacts: Iterable[Contact], depth: int) -> None:
        for contact in contacts:
            node_id = contact.node_id
            if node_id in self._candidates or node_id == self._own_id:
                continue
            d = id_to_int(node_id) ^ self._t
            self._candidates[node_id] = _Candidate(contact, d, depth)
            bisect.insort(self._order, (d, node_id))

    def next_requests(self) -> list[Contact]:
        """Contacts to query now; each one is marked as waiting for a reply."""
        out: list[Contact] = []
        budget = self.alpha - self.in_flight
        if budget <= 0:
            return out
        seen = 0
        for _, node_id in self._order:
            candidate = self._candidates[node_id]
            state = candidate.state
            if state is State.FAILED or state is State.STALLED:
                continue
            seen += 1
            if seen > self.k:
                break
            if state is State.FRESH:
                candidate.state = State.WAITING
                out.append(candidate.contact)
                if len(out) == budget:
                    break
        self.in_flight += len(out)
        self.messages += len(out)
        return out

    def _settle(self, node_id: bytes, state: State) -> _Candidate | None:
        candidate = self._candidates.get(node_id)
        if candidate is None:
            return None
        if candidate.state is State.WAITING:
            self.in_flight -= 1
        elif candidate.state is not State.STALLED:
            return None
        candidate.state = state
        return candidate

    def on_stall(self, node_id: bytes) -> None:
        """The request to `node_id` is slow: free its slot, keep waiting for it."""
        self._settle(node_id, State.STALLED)

    def on_reply(self, node_id: bytes, closer: Iterable[Contact] = ()) -> None:
        candidate = self._settle(node_id, State.SUCCEEDED)
        if candidate is None:
            return
        self.hops = max(self.hops, candidate.depth)
        self._add(closer, candidate.depth + 1)

    def on_failure(self, node_id: bytes) -> None:
        self._settle(node_id, State.FAILED)

    @property
    def done(self) -> bool:
        if self.in_flight:
            return False
        seen = 0
        for _, node_id in self._order:
            state = self._candidates[node_id].state
            if state is State.FAILED or state is State.STALLED:
                continue
            if state is State.FRESH:
                return False
            seen += 1
            if seen >= self.k:
                break
        return True

    def state(self, node_id: bytes) -> State | None:
        candidate = self._candidates.get(node_id)
        return None if candidate is None else candidate.state

    def result(self) -> list[Contact]:
        """The (up to) k closest contacts that answered, closest first."""
        out = []
        for _, node_id in self._order:
            candidate = self._candidates[node_id]
            if candidate.state is State.SUCCEEDED:
                out.append(candidate.contact)
                if len(out) == self.k:
                    break
        return out

    def known(self) -> list[Contact]:
        """Every candidate not known to have failed, closest first."""
        return [
            self._candidates[node_id].contact
            for _, node_id in self._order
            if self._candidates[node_id].state is not State.FAILED
        ]
