"""The peer race as a pure state machine: no I/O, no clock.

The shell (`racer.py`) feeds it what happened, each with the time it happened
(`receive(event, now)`), and asks `next_command(now)` what to do next:

- `Start(provider)`: ask this provider for the response head.
- `Abandon(provider)`: that attempt is past its `head_timeout`; cancel it. The
  race already counts it as failed.
- `WakeAt(deadline)`: wait for the next event, but no later than `deadline`
  (`math.inf`: no deadline of its own), then ask again.
- `Done(winner, reason, head_latency)`: stop; `winner` is None for a miss. Every
  later call answers the same, and later events change nothing: a head that
  arrives after the end is the shell's to close.

The rules. Providers come from the DHT as they are found. The first is started as
soon as it is known; while an attempt is in flight the next one starts only once
`hedge_delay` has passed since the last start (a hedge), and the first head from
an attempt in flight wins. There are at most `resolve_retries` attempts, not
counting up to `unreachable_allowance` that found nobody at the address (refused,
no route: a record of a node that is gone, or forged by the dozen); those cost
next to nothing, so the race keeps looking past them. With
nothing in flight the race is a miss once it is out of options (every attempt
spent, or the lookup over with nobody left to try) or once `resolve_timeout` has
passed since the race began or since the last attempt in flight failed.
`budget` bounds the whole race (manifests and HEAD; blobs have `math.inf`): when
it runs out the race is a miss, whatever is still in flight.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class RaceLimits:
    resolve_timeout: float = 0.020
    resolve_retries: int = 3
    hedge_delay: float = 0.1
    head_timeout: float = 5.0
    budget: float = math.inf
    unreachable_allowance: int = 16


# What happened


@dataclass(frozen=True, slots=True)
class ProviderFound(Generic[P]):
    provider: P


@dataclass(frozen=True, slots=True)
class Exhausted:
    """The lookup is over: no more providers will be found."""


@dataclass(frozen=True, slots=True)
class AttemptFailed(Generic[P]):
    provider: P
    reason: str
    unreachable: bool = False  # nobody at the address: not one of the retries


@dataclass(frozen=True, slots=True)
class HeadReady(Generic[P]):
    """This provider's head arrived and was found acceptable."""

    provider: P


RaceEvent = ProviderFound[P] | Exhausted | AttemptFailed[P] | HeadReady[P]


# What to do


@dataclass(frozen=True, slots=True)
class Start(Generic[P]):
    provider: P


@dataclass(frozen=True, slots=True)
class Abandon(Generic[P]):
    provider: P


@dataclass(frozen=True, slots=True)
class WakeAt:
    deadline: float


Outcome = Literal["won", "budget", "resolve-timeout", "retries", "exhausted"]


@dataclass(frozen=True, slots=True)
class Done(Generic[P]):
    winner: P | None
    reason: Outcome
    head_latency: float = 0.0


RaceCommand = Start[P] | Abandon[P] | WakeAt | Done[P]


class Race(Generic[P]):
    __slots__ = (
        "_attempts",
        "_deadline",
        "_done",
        "_exhausted",
        "_hedge_at",
        "_idle_since",
        "_in_flight",
        "_limits",
        "_pending",
        "_seen",
        "_unreachable",
    )

    def __init__(self, limits: RaceLimits, now: float) -> None:
        self._limits = limits
        self._deadline = now + limits.budget
        self._pending: deque[P] = deque()
        self._seen: set[P] = set()
        self._in_flight: dict[P, float] = {}  # provider -> when its attempt started
        self._attempts = 0
        self._unreachable = 0
        self._exhausted = False
        self._idle_since = now
        self._hedge_at = math.inf
        self._done: Done[P] | None = None

    @property
    def done(self) -> Done[P] | None:
        return self._done

    # What happened

    def receive(self, event: RaceEvent[P], now: float) -> None:
        if self._done is not None:
            return
        if isinstance(event, ProviderFound):
            if event.provider not in self._seen:
                self._seen.add(event.provider)
                self._pending.append(event.provider)
        elif isinstance(event, Exhausted):
            self._exhausted = True
        elif isinstance(event, AttemptFailed):
            if event.provider in self._in_flight:
                self._settle(event.provider, now)
                if event.unreachable and self._unreachable < self._limits.unreachable_allowance:
                    self._unreachable += 1
                    self._attempts -= 1
        else:
            started = self._in_flight.get(event.provider)
            if started is not None:
                self._done = Done(event.provider, "won", now - started)

    # What to do

    def next_command(self, now: float) -> RaceCommand[P]:
        if self._done is not None:
            return self._done
        if now >= self._deadline:
            return self._finish("budget")
        overdue = self._overdue(now)
        if overdue is not None:
            self._settle(overdue, now)
            return Abandon(overdue)
        can_start = bool(self._pending) and self._attempts < self._limits.resolve_retries
        if can_start and (not self._in_flight or now >= self._hedge_at):
            provider = self._pending.popleft()
            self._attempts += 1
            self._in_flight[provider] = now
            self._hedge_at = now + self._limits.hedge_delay
            return Start(provider)
        if not self._in_flight:
            if self._attempts >= self._limits.resolve_retries:
                return self._finish("retries")
            if self._exhausted and not self._pending:
                return self._finish("exhausted")
            if now >= self._idle_since + self._limits.resolve_timeout:
                return self._finish("resolve-timeout")
        return WakeAt(min(self._deadline, self._next_timer(can_start)))

    def _overdue(self, now: float) -> P | None:
        for provider, started in self._in_flight.items():
            if now >= started + self._limits.head_timeout:
                return provider
        return None

    def _next_timer(self, can_start: bool) -> float:
        if not self._in_flight:
            return self._idle_since + self._limits.resolve_timeout
        head_due = min(self._in_flight.values()) + self._limits.head_timeout
        return min(head_due, self._hedge_at) if can_start else head_due

    def _settle(self, provider: P, now: float) -> None:
        del self._in_flight[provider]
        if not self._in_flight:
            self._idle_since = now

    def _finish(self, reason: Outcome) -> Done[P]:
        self._done = Done(None, reason)
        return self._done
