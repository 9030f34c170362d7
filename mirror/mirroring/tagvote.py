"""Which digest a tag names, by the first answers of several providers (pure).

A tag cannot be proven: an image served under the wrong tag is self-consistent,
every digest in it matches. Authentication keeps outsiders from providing tags;
this keeps one wrong member (a node with a stale or planted tag) from deciding
alone. Up to `voters` providers are asked at once; the vote ends when they have
all answered, when `grace` has passed since the first answer, when nobody is
left to ask, or when the budget runs out. The digest most answers name wins, the
earliest answer breaking a tie; answers naming another digest are counted as
disagreements.

Fed like the race (race.py): `receive(event, now)` with `ProviderFound`,
`Exhausted`, `AttemptFailed` or `Answered`; `next_command(now)` gives `Start`,
`WakeAt` or `Decided`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from mirror.mirroring.race import AttemptFailed, Exhausted, ProviderFound, Start, WakeAt

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class VoteLimits:
    voters: int = 3
    # How long the others have, once one answered.
    grace: float = 0.05
    # With nothing in flight and nobody to ask, how long to wait for a provider.
    resolve_timeout: float = 0.020
    # Attempts that failed before answering, past which nobody new is asked.
    retries: int = 3
    budget: float = 5.0


@dataclass(frozen=True, slots=True)
class Answered(Generic[P]):
    provider: P
    digest: str


@dataclass(frozen=True, slots=True)
class Decided(Generic[P]):
    """`winner`: the earliest provider that named `digest` (None: nobody answered)."""

    winner: P | None
    digest: str = ""
    agreeing: int = 0
    disagreeing: int = 0


VoteEvent = ProviderFound[P] | Exhausted | AttemptFailed[P] | Answered[P]
VoteCommand = Start[P] | WakeAt | Decided[P]


class TagVote(Generic[P]):
    def __init__(self, limits: VoteLimits, now: float) -> None:
        self._limits = limits
        self._deadline = now + limits.budget
        self._pending: deque[P] = deque()
        self._seen: set[P] = set()
        self._in_flight: set[P] = set()
        self._ballots: list[Answered[P]] = []
        self._first_answer = float("inf")
        self._failures = 0
        self._exhausted = False
        self._idle_since = now
        self._done: Decided[P] | None = None

    def receive(self, event: VoteEvent[P], now: float) -> None:
        if self._done is not None:
            return
        if isinstance(event, ProviderFound):
            if event.provider not in self._seen:
                self._seen.add(event.provider)
                self._pending.append(event.provider)
        elif isinstance(event, Exhausted):
            self._exhausted = True
        elif event.provider in self._in_flight:
            self._in_flight.discard(event.provider)
            if not self._in_flight:
                self._idle_since = now
            if isinstance(event, Answered):
                self._ballots.append(event)
                self._first_answer = min(self._first_answer, now)
            elif not event.unreachable:
                self._failures += 1

    def next_command(self, now: float) -> VoteCommand[P]:
        if self._done is not None:
            return self._done
        limits = self._limits
        asked = len(self._in_flight) + len(self._ballots)
        if (
            self._pending
            and asked < limits.voters
            and self._failures < limits.retries
            and now < self._first_answer + limits.grace
        ):
            provider = self._pending.popleft()
            self._in_flight.add(provider)
            return Start(provider)
        if (
            now >= self._deadline
            or len(self._ballots) >= limits.voters
            or now >= self._first_answer + limits.grace
        ):
            return self._decide()
        if not self._in_flight:
            out_of_options = self._failures >= limits.retries or (
                self._exhausted and not self._pending
            )
            if out_of_options or now >= self._idle_since + limits.resolve_timeout:
                return self._decide()
            return WakeAt(
                min(
                    self._deadline,
                    self._first_answer + limits.grace,
                    self._idle_since + limits.resolve_timeout,
                )
            )
        return WakeAt(min(self._deadline, self._first_answer + limits.grace))

    def _decide(self) -> Decided[P]:
        counts: dict[str, int] = {}
        for ballot in self._ballots:
            counts[ballot.digest] = counts.get(ballot.digest, 0) + 1
        if not counts:
            self._done = Decided(None)
            return self._done
        # max() keeps the first of equal counts, and dicts keep the order of first answers.
        digest = max(counts, key=lambda d: counts[d])
        winner = next(b.provider for b in self._ballots if b.digest == digest)
        agreeing = counts[digest]
        self._done = Decided(winner, digest, agreeing, len(self._ballots) - agreeing)
        return self._done
