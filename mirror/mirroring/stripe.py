"""Striping one blob body over several complete holders: the decisions (pure).

A layer of several GB held by several nodes should not arrive at the speed of one
holder's uplink. The body is cut into pieces; up to `width` holders are each asked
for pieces with `Range` (up to `depth` requests outstanding on one connection, so a
holder never waits a round trip between two), and the bytes go to the client in
order. The shell (`striper.py`) owns the sockets and a ring buffer of `window`
bytes; this core decides, from what happened and an explicit `now`:

- which range goes to which holder: the lowest range nobody is fetching, only
  while it ends within `window` bytes of the first byte not yet delivered (so the
  ring never holds more: memory is bounded whatever the holders do);
- what a holder's answer must be: `206` with exactly the `Content-Range` and
  length asked for; a `503` takes it out of this body without blame; anything
  else is a failure;
- whose uplink is spare: the first holder found (the one the miss path chose) is
  asked plainly, every other one for spare uplink only (`Fetch.spare`: it answers
  `503` while it streams anything else). Such a busy holder is set aside, not
  given up: it is asked again (spare only) `busy_retry` seconds later, its other
  stream may be over; and once no holder is live nor waiting, those set aside
  are asked again at once, plainly, since the body now needs them (a `503` then
  is final);
- replacing a holder: one that broke, answered wrong, sent nothing for
  `stall_timeout`, or less than `min_rate` over `rate_window`, is dropped, and the
  bytes it still owed go to the others (those it sent are kept); a holder that
  holds the window back (the first undelivered byte is its to send) while another
  stands idle is dropped too once the idle one could have sent its whole range
  (and `laggard_after` has passed), if it went at less than 1/`laggard_factor` of
  the idle one's rate since its answer came: one slow uplink must not set the pace;
- giving up: with no holder left and none to come, or after `max_failures`.

A holder dropped (it failed, answered wrong or was too slow) is never asked again
for this body; one that said busy is, as above.
Commands: `Fetch(holder, start, end, spare)` (end exclusive), `Drop(holder, reason)`,
`WakeAt(deadline)`, `Finished()`, `GiveUp(reason)`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

H = TypeVar("H", bound=Hashable)

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StripeLimits:
    width: int = 4  # holders fetched from at once
    piece: int = MIB  # bytes asked for in one request
    depth: int = 2  # requests outstanding on one holder's connection
    stall_timeout: float = 10.0
    min_rate: float = 65536.0  # bytes/s a busy holder must send over each rate_window
    rate_window: float = 10.0
    laggard_factor: float = 3.0
    laggard_after: float = 0.1
    max_failures: int = 8
    busy_retry: float = 0.5  # a holder busy for spare uplink is asked again after this

    @property
    def window(self) -> int:
        """Bytes between the first one not yet delivered and the end of any range asked for."""
        return self.width * self.depth * self.piece


# What happened


@dataclass(frozen=True, slots=True)
class HolderFound(Generic[H]):
    holder: H


@dataclass(frozen=True, slots=True)
class NoMoreHolders:
    """The lookup is over: no more holders will be found."""


@dataclass(frozen=True, slots=True)
class Answered(Generic[H]):
    """The head of the answer to the holder's oldest outstanding request."""

    holder: H
    status: int
    content_range: str | None
    content_length: int | None
    digest: str | None = None  # its Docker-Content-Digest, if any


@dataclass(frozen=True, slots=True)
class Received(Generic[H]):
    """`count` more body bytes of the holder's oldest outstanding request are in the ring."""

    holder: H
    count: int


@dataclass(frozen=True, slots=True)
class HolderFailed(Generic[H]):
    holder: H
    reason: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """`count` more bytes reached the client (and the hash): their room in the ring is free."""

    count: int


StripeEvent = (
    HolderFound[H] | NoMoreHolders | Answered[H] | Received[H] | HolderFailed[H] | Delivered
)


# What to do


@dataclass(frozen=True, slots=True)
class Fetch(Generic[H]):
    holder: H
    start: int
    end: int  # exclusive
    spare: bool = False  # spare uplink only: the holder may answer 503 if it is busy


@dataclass(frozen=True, slots=True)
class Drop(Generic[H]):
    holder: H
    reason: str


@dataclass(frozen=True, slots=True)
class WakeAt:
    deadline: float


@dataclass(frozen=True, slots=True)
class Finished:
    pass


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


StripeCommand = Fetch[H] | Drop[H] | WakeAt | Finished | GiveUp


@dataclass(slots=True)
class _Range:
    start: int
    end: int
    got: int = 0
    answered: bool = False
    since: float = math.inf  # when its answer's head came: the holder began sending it

    @property
    def filled(self) -> int:
        return self.start + self.got

    @property
    def complete(self) -> bool:
        return self.start + self.got >= self.end


@dataclass(slots=True)
class _Holder:
    requests: deque[_Range] = field(default_factory=deque)
    last_progress: float = 0.0
    floor_start: float = 0.0
    floor_bytes: int = 0
    received: int = 0
    busy_time: float = 0.0
    busy_from: float = 0.0

    def rate(self, now: float, known_after: int) -> float | None:
        """Bytes/s over the time it had requests outstanding; None until it sent enough."""
        seconds = self.busy_time + (now - self.busy_from if self.requests else 0.0)
        if self.received < known_after or seconds <= 0:
            return None
        return self.received / seconds


@dataclass(slots=True)
class StripeStats(Generic[H]):
    failures: int = 0  # holders that broke, answered wrong or were too slow
    busy: int = 0  # holders that answered 503
    laggards: int = 0  # holders dropped for holding the window back
    replaced: int = 0  # ranges (or their rest) given to another holder
    contributors: list[H] = field(default_factory=list)  # holders that sent bytes, in order


class Stripe(Generic[H]):
    """One body, bytes [`first`, `end`) of a blob of `total` bytes."""

    def __init__(
        self,
        limits: StripeLimits,
        first: int,
        end: int,
        total: int,
        now: float,
        *,
        digest: str | None = None,
    ) -> None:
        if limits.width < 1 or limits.depth < 1 or limits.piece < 1:
            raise ValueError("width, depth and piece must be positive")
        self.limits = limits
        self.first, self.end, self.total = first, end, total
        self.digest = digest
        self.sent = first  # delivered to the client: the ring's room before it is free
        self.ready = first  # every byte before it is in the ring
        self.stats: StripeStats[H] = StripeStats()
        self._next_new = first
        self._pending: list[tuple[int, int]] = []  # ranges nobody fetches now, sorted
        self._by_start: dict[int, _Range] = {}  # every range with bytes still undelivered
        self._spare: deque[H] = deque()
        self._live: dict[H, _Holder] = {}
        self._seen: set[H] = set()
        self._plain: set[H] = set()  # asked without the spare-uplink-only condition
        # (holder, when): those that answered busy to a spare-only ask
        self._set_aside: deque[tuple[H, float]] = deque()
        self._exhausted = False
        self._commands: deque[StripeCommand[H]] = deque()
        self._over: Finished | GiveUp | None = None

    @property
    def over(self) -> Finished | GiveUp | None:
        return self._over

    @property
    def live(self) -> tuple[H, ...]:
        return tuple(self._live)

    # What happened

    def receive(self, event: StripeEvent[H], now: float) -> None:
        if isinstance(event, Delivered):
            self._delivered(event.count)  # bytes ready before the end still go out
        elif self._over is not None:
            return
        elif isinstance(event, HolderFound):
            if event.holder not in self._seen:
                if not self._seen:
                    self._plain.add(event.holder)
                self._seen.add(event.holder)
                self._spare.append(event.holder)
        elif isinstance(event, NoMoreHolders):
            self._exhausted = True
        elif event.holder not in self._live:
            return  # already dropped: whatever it says now changes nothing
        elif isinstance(event, Answered):
            self._answered(event, now)
        elif isinstance(event, Received):
            self._received(event.holder, event.count, now)
        else:
            self._drop(event.holder, f"failed: {event.reason}", failure=True)

    def _answered(self, answer: Answered[H], now: float) -> None:
        holder = self._live[answer.holder]
        if not holder.requests or holder.requests[0].answered:
            self._drop(answer.holder, "answered what it was not asked", failure=True)
            return
        if answer.status == 503:
            self.stats.busy += 1
            self._drop(answer.holder, "busy", failure=False)
            if answer.holder not in self._plain:
                self._set_aside.append((answer.holder, now))
            return
        request = holder.requests[0]
        wrong = self._wrong_answer(answer, request)
        if wrong is not None:
            self._drop(answer.holder, wrong, failure=True)
            return
        request.answered = True
        request.since = now
        holder.last_progress = now

    def _wrong_answer(self, answer: Answered[H], request: _Range) -> str | None:
        whole = request.start == 0 and request.end == self.total
        if answer.status != 206 and not (answer.status == 200 and whole):
            return f"answered {answer.status}"
        if answer.digest is not None and self.digest is not None and answer.digest != self.digest:
            return f"served digest {answer.digest}"
        length = request.end - request.start
        if answer.content_length != length:
            return f"wrong length {answer.content_length} for {length} bytes asked"
        if answer.status == 200:
            return None
        expected = f"bytes {request.start}-{request.end - 1}/{self.total}"
        if answer.content_range != expected:
            return f"wrong range {answer.content_range!r}, asked {expected!r}"
        return None

    def _received(self, name: H, count: int, now: float) -> None:
        holder = self._live[name]
        request = holder.requests[0] if holder.requests else None
        if request is None or not request.answered or count > request.end - request.filled:
            self._drop(name, "sent bytes it was not asked for", failure=True)
            return
        if count <= 0:
            return
        # A holder set aside as busy comes back as a new `_Holder`: listed once all the same.
        if holder.received == 0 and name not in self.stats.contributors:
            self.stats.contributors.append(name)
        before = request.filled
        request.got += count
        holder.received += count
        holder.floor_bytes += count
        holder.last_progress = now
        if self.ready == before:
            self.ready = request.filled
            self._advance_ready()
        if request.complete:
            holder.requests.popleft()
            if not holder.requests:
                holder.busy_time += now - holder.busy_from

    def _advance_ready(self) -> None:
        while (request := self._by_start.get(self.ready)) is not None and request.got:
            self.ready = request.filled
            if not request.complete:
                return

    def _delivered(self, count: int) -> None:
        if count <= 0 or self.sent + count > self.ready:
            raise ValueError("delivered bytes that were not ready")
        self.sent += count
        for start in [s for s, r in self._by_start.items() if r.end <= self.sent and r.complete]:
            del self._by_start[start]

    def _drop(self, name: H, reason: str, *, failure: bool) -> None:
        holder = self._live.pop(name)
        for request in holder.requests:
            rest = (request.filled, request.end)
            if request.got:
                request.end = request.filled  # the bytes it did send are kept
            else:
                del self._by_start[request.start]
            self._pending.append(rest)
            self.stats.replaced += 1
        self._pending.sort()
        if failure:
            self.stats.failures += 1
        self._commands.append(Drop(name, reason))

    # What to do

    def next_command(self, now: float) -> StripeCommand[H]:
        if self._commands:
            return self._commands.popleft()
        if self._over is not None:
            return self._over
        if self.sent >= self.end:
            self._over = Finished()
            return self._over
        self._check_holders(now)
        if self.stats.failures >= self.limits.max_failures:
            self._over = GiveUp(f"{self.stats.failures} holders failed")
        else:
            self._assign(now)
            if not self._live and not self._spare and not self._set_aside and self._exhausted:
                self._over = GiveUp("no holder left")
        if self._commands:
            return self._commands.popleft()
        if self._over is not None:
            return self._over
        return WakeAt(self._next_deadline(now))

    def _check_holders(self, now: float) -> None:
        limits = self.limits
        for name, holder in list(self._live.items()):
            if not holder.requests:
                continue
            if now >= holder.last_progress + limits.stall_timeout:
                self._drop(name, f"sent nothing for {limits.stall_timeout:g}s", failure=True)
            elif now >= holder.floor_start + limits.rate_window:
                if holder.floor_bytes < limits.min_rate * limits.rate_window:
                    self._drop(name, f"sent less than {limits.min_rate:.0f} B/s", failure=True)
                else:
                    holder.floor_start, holder.floor_bytes = now, 0
        laggard = self._laggard(now)
        if laggard is not None and now >= laggard[1]:
            self.stats.laggards += 1
            self._drop(laggard[0], "slower than an idle holder", failure=False)

    def _laggard(self, now: float) -> tuple[H, float] | None:
        """The holder owning the first undelivered byte, and when it counts as too slow,
        while another holder stands idle; None when nobody is idle or no rate is known."""
        idle_rates = [
            rate
            for holder in self._live.values()
            if not holder.requests and (rate := holder.rate(now, self.limits.piece)) is not None
        ]
        if not idle_rates or self._assignable() is not None:
            return None
        best = max(idle_rates)
        for name, holder in self._live.items():
            asked = got = 0  # what it is to send before the first undelivered byte is in
            for request in holder.requests:
                asked += request.end - request.start
                got += request.got
                if request.filled == self.ready:
                    # Timed from its answer (a holder's first answer may wait for the
                    # proof of its copy, once), judged once the idle one could have
                    # sent all of it and `laggard_after` has passed (one hiccup is no
                    # verdict): too slow when under 1/laggard_factor of the idle one's rate.
                    since = holder.requests[0].since
                    judged = since + max(asked / best, self.limits.laggard_after)
                    return name, max(judged, since + self.limits.laggard_factor * got / best)
        return None

    def _assignable(self) -> tuple[int, int] | None:
        """The next range to ask for, if one fits the window."""
        limit = self.sent + self.limits.window
        if self._pending:
            start, end = self._pending[0]
            end = min(end, start + self.limits.piece)
            return (start, end) if end <= limit else None
        if self._next_new >= self.end:
            return None
        end = min(self._next_new + self.limits.piece, self.end)
        return (self._next_new, end) if end <= limit else None

    def _take(self) -> tuple[int, int] | None:
        span = self._assignable()
        if span is None:
            return None
        if self._pending:
            _, end = self._pending.pop(0)
            if span[1] < end:
                self._pending.insert(0, (span[1], end))
        else:
            self._next_new = span[1]
        return span

    def _assign(self, now: float) -> None:
        needed = not self._live and not self._spare
        while self._set_aside and (needed or now >= self._set_aside[0][1] + self.limits.busy_retry):
            name, _ = self._set_aside.popleft()
            if needed:
                self._plain.add(name)
            self._spare.append(name)
        while self._spare and len(self._live) < self.limits.width:
            self._live[self._spare.popleft()] = _Holder(last_progress=now, floor_start=now)
        for depth in range(self.limits.depth):
            for name, holder in sorted(self._live.items(), key=lambda item: len(item[1].requests)):
                if len(holder.requests) > depth:
                    continue
                span = self._take()
                if span is None:
                    return
                self._ask(name, holder, span, now)

    def _ask(self, name: H, holder: _Holder, span: tuple[int, int], now: float) -> None:
        request = _Range(*span)
        if not holder.requests:
            holder.busy_from = now
            holder.last_progress = now
            holder.floor_start, holder.floor_bytes = now, 0
        holder.requests.append(request)
        self._by_start[request.start] = request
        self._commands.append(Fetch(name, *span, spare=name not in self._plain))

    def _next_deadline(self, now: float) -> float:
        limits = self.limits
        deadlines = [math.inf]
        for holder in self._live.values():
            if holder.requests:
                deadlines.append(holder.last_progress + limits.stall_timeout)
                deadlines.append(holder.floor_start + limits.rate_window)
        laggard = self._laggard(now)
        if laggard is not None:
            deadlines.append(laggard[1])
        if self._set_aside:
            deadlines.append(self._set_aside[0][1] + limits.busy_retry)
        return min(deadlines)
