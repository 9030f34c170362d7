"""The stripe core on fake time: assignment, the reorder window, replacing holders,
giving up. Holders are plain strings; no sockets, no Trio. Times are binary
fractions, so that deadlines compare exactly."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from mirror.mirroring.stripe import (
    Answered,
    Delivered,
    Drop,
    Fetch,
    Finished,
    GiveUp,
    HolderFailed,
    HolderFound,
    NoMoreHolders,
    Received,
    Stripe,
    StripeCommand,
    StripeLimits,
    WakeAt,
)

# A window of 2 holders x 2 requests x 10 bytes = 40 bytes.
LIMITS = StripeLimits(width=2, piece=10, depth=2, stall_timeout=8.0, min_rate=0.0, rate_window=4.0)
TOTAL = 100


def _stripe(*holders: str, now: float = 0.0, **changes: Any) -> Stripe[str]:
    stripe: Stripe[str] = Stripe(
        replace(LIMITS, **changes), 0, TOTAL, TOTAL, now, digest="sha256:d"
    )
    for holder in holders:
        stripe.receive(HolderFound(holder), now)
    return stripe


def _step(stripe: Stripe[str], now: float) -> list[StripeCommand[str]]:
    """Every command up to the next wait or the end."""
    commands = []
    while True:
        command = stripe.next_command(now)
        commands.append(command)
        if isinstance(command, WakeAt | Finished | GiveUp):
            return commands


def _fetches(commands: list[StripeCommand[str]]) -> list[tuple[str, int, int]]:
    return [(c.holder, c.start, c.end) for c in commands if isinstance(c, Fetch)]


def _answer(stripe: Stripe[str], holder: str, start: int, end: int, now: float) -> None:
    """The holder's honest head for [start, end)."""
    content_range = f"bytes {start}-{end - 1}/{TOTAL}"
    stripe.receive(Answered(holder, 206, content_range, end - start, "sha256:d"), now)


def _serve(stripe: Stripe[str], holder: str, start: int, end: int, now: float) -> None:
    """The holder answers [start, end) and sends all of it."""
    _answer(stripe, holder, start, end, now)
    stripe.receive(Received(holder, end - start), now)


def test_ranges_go_round_robin_within_the_window() -> None:
    stripe = _stripe("a", "b")
    commands = _step(stripe, 0.0)
    # Each holder gets one range before any gets a second; 40 bytes are asked for and
    # no more: the window is full until the client has some.
    assert _fetches(commands) == [("a", 0, 10), ("b", 10, 20), ("a", 20, 30), ("b", 30, 40)]
    assert isinstance(commands[-1], WakeAt)
    assert set(stripe.live) == {"a", "b"}


def test_no_more_than_width_holders_are_used_and_spares_wait() -> None:
    stripe = _stripe("a", "b", "c")
    assert {holder for holder, _, _ in _fetches(_step(stripe, 0.0))} == {"a", "b"}


def test_bytes_ahead_of_the_first_missing_one_wait_in_the_window() -> None:
    stripe = _stripe("a", "b")
    _step(stripe, 0.0)
    _serve(stripe, "b", 10, 20, 1.0)
    _serve(stripe, "b", 30, 40, 1.0)
    _answer(stripe, "a", 0, 10, 0.25)
    stripe.receive(Received("a", 9), 1.0)
    # b has sent everything it was asked for, but byte 9 is a's: the client can have 9
    # bytes, and no new range fits the window (it ends at byte 40).
    assert stripe.ready == 9
    assert _fetches(_step(stripe, 1.0)) == []
    stripe.receive(Received("a", 1), 1.0)
    assert stripe.ready == 20  # a's first range joins b's
    assert _fetches(_step(stripe, 1.0)) == []  # still nothing delivered: still full
    stripe.receive(Delivered(20), 1.0)
    # 20 bytes of room: two new ranges, the first to b (idle), then one each.
    assert _fetches(_step(stripe, 1.0)) == [("b", 40, 50), ("a", 50, 60)]


def test_a_partial_range_is_ready_up_to_its_last_byte() -> None:
    stripe = _stripe("a", "b")
    _step(stripe, 0.0)
    _answer(stripe, "a", 0, 10, 0.25)
    stripe.receive(Received("a", 4), 0.25)
    assert stripe.ready == 4
    stripe.receive(Delivered(4), 0.25)
    assert stripe.sent == 4
    with pytest.raises(ValueError, match="not ready"):
        stripe.receive(Delivered(1), 0.25)


def test_the_whole_body_goes_through_and_finishes() -> None:
    stripe = _stripe("a", "b")
    now = 0.0
    while True:
        commands = _step(stripe, now)
        if isinstance(commands[-1], Finished):
            break
        for holder, start, end in _fetches(commands):
            _serve(stripe, holder, start, end, now)
        stripe.receive(Delivered(stripe.ready - stripe.sent), now)
        now += 0.125
    assert stripe.sent == TOTAL
    assert stripe.stats.contributors == ["a", "b"]
    assert stripe.stats.failures == stripe.stats.replaced == 0


def test_a_holder_failing_mid_range_keeps_its_bytes_and_another_takes_the_rest() -> None:
    stripe = _stripe("a", "b", "c")
    _step(stripe, 0.0)
    _answer(stripe, "a", 0, 10, 0.25)
    stripe.receive(Received("a", 6), 0.25)
    stripe.receive(HolderFailed("a", "connection reset"), 0.5)
    commands = _step(stripe, 0.5)
    assert commands[0] == Drop("a", "failed: connection reset")
    # The spare joins; what a still owed (the rest of 0-10, all of 20-30) is asked
    # for before anything new, lowest first.
    assert _fetches(commands) == [("c", 6, 10), ("c", 20, 30)]
    assert stripe.ready == 6
    _serve(stripe, "c", 6, 10, 0.75)
    assert stripe.ready == 10
    assert stripe.stats.failures == 1 and stripe.stats.replaced == 2
    # Whatever the dropped holder says now changes nothing.
    stripe.receive(Received("a", 4), 0.75)
    assert stripe.ready == 10


def test_all_holders_failing_is_giving_up_once_nobody_is_left_to_come() -> None:
    stripe = _stripe("a", "b")
    _step(stripe, 0.0)
    stripe.receive(HolderFailed("a", "refused"), 0.25)
    stripe.receive(HolderFailed("b", "refused"), 0.25)
    commands = _step(stripe, 0.25)
    # The lookup may still name someone: wait for it.
    assert [type(c) for c in commands] == [Drop, Drop, WakeAt]
    assert commands[-1] == WakeAt(math.inf)
    stripe.receive(NoMoreHolders(), 0.5)
    assert _step(stripe, 0.5) == [GiveUp("no holder left")]
    assert stripe.next_command(0.5) == GiveUp("no holder left")


def test_bytes_ready_before_giving_up_still_go_out() -> None:
    stripe = _stripe("a")
    stripe.receive(NoMoreHolders(), 0.0)
    _step(stripe, 0.0)
    _serve(stripe, "a", 0, 10, 0.25)
    stripe.receive(HolderFailed("a", "reset"), 0.25)
    assert _step(stripe, 0.25)[-1] == GiveUp("no holder left")
    stripe.receive(Delivered(10), 0.5)
    assert stripe.sent == 10


def test_a_holder_found_late_takes_over_from_failed_ones() -> None:
    stripe = _stripe("a")
    _step(stripe, 0.0)
    stripe.receive(HolderFailed("a", "reset"), 0.25)
    _step(stripe, 0.25)
    stripe.receive(HolderFound("b"), 0.5)
    stripe.receive(HolderFound("a"), 0.5)  # named again by the lookup: never asked again
    assert {h for h, _, _ in _fetches(_step(stripe, 0.5))} == {"b"}


@pytest.mark.parametrize(
    ("status", "content_range", "length", "digest"),
    [
        (206, "bytes 0-19/100", 20, "sha256:d"),  # more than asked
        (206, "bytes 10-19/100", 10, "sha256:d"),  # another range
        (206, "bytes 0-9/200", 10, "sha256:d"),  # another blob's size
        (200, None, 100, "sha256:d"),  # the whole blob to a range request
        (206, "bytes 0-9/100", 10, "sha256:other"),  # another digest
        (404, None, 50, None),
        (206, "bytes 0-9/100", None, "sha256:d"),  # no usable length
    ],
)
def test_a_holder_answering_a_wrong_range_is_dropped_and_its_ranges_reassigned(
    status: int, content_range: str | None, length: int | None, digest: str | None
) -> None:
    stripe = _stripe("a", "b", "c")
    _step(stripe, 0.0)
    stripe.receive(Answered("a", status, content_range, length, digest), 0.25)
    commands = _step(stripe, 0.25)
    assert isinstance(commands[0], Drop) and commands[0].holder == "a"
    assert _fetches(commands) == [("c", 0, 10), ("c", 20, 30)]
    assert stripe.stats.failures == 1


def test_bytes_before_an_answer_or_past_the_range_drop_the_holder() -> None:
    stripe = _stripe("a", "b")
    _step(stripe, 0.0)
    stripe.receive(Received("a", 3), 0.25)  # no head yet
    _answer(stripe, "b", 10, 20, 0.25)
    stripe.receive(Received("b", 11), 0.25)  # one byte too many
    assert {c.holder for c in _step(stripe, 0.25) if isinstance(c, Drop)} == {"a", "b"}
    assert stripe.ready == 0


def test_a_busy_holder_is_not_used_and_not_blamed() -> None:
    stripe = _stripe("a", "b", "c")
    _step(stripe, 0.0)
    stripe.receive(Answered("a", 503, None, 120, None), 0.25)
    commands = _step(stripe, 0.25)
    assert commands[0] == Drop("a", "busy")
    assert {h for h, _, _ in _fetches(commands)} == {"c"}
    assert stripe.stats.failures == 0 and stripe.stats.busy == 1


def test_only_the_first_holder_is_asked_plainly() -> None:
    stripe = _stripe("a", "b", "c", width=3)
    fetches = [c for c in _step(stripe, 0.0) if isinstance(c, Fetch)]
    assert {(c.holder, c.spare) for c in fetches} == {("a", False), ("b", True), ("c", True)}


def test_a_holder_busy_for_spare_uplink_is_asked_plainly_once_it_is_all_there_is() -> None:
    """The first holder dies just after a second one said it had no spare uplink (it
    was streaming something else): the body does not give up, it asks the second
    one again without the condition, from the first byte the dead one still owed."""
    stripe = _stripe("a", "b")
    stripe.receive(NoMoreHolders(), 0.0)
    _step(stripe, 0.0)
    stripe.receive(Answered("b", 503, None, None, None), 0.25)
    commands = _step(stripe, 0.25)
    assert commands[0] == Drop("b", "busy")
    assert all(c.holder == "a" for c in commands if isinstance(c, Fetch))
    _serve(stripe, "a", 0, 10, 0.25)
    stripe.receive(HolderFailed("a", "reset"), 0.5)
    commands = _step(stripe, 0.5)
    assert commands[0] == Drop("a", "failed: reset")
    fetches = [c for c in commands if isinstance(c, Fetch)]
    assert fetches[0] == Fetch("b", 10, 20, spare=False)
    assert {c.holder for c in fetches} == {"b"} and not any(c.spare for c in fetches)
    # Busy again, asked plainly: that answer is final.
    stripe.receive(Answered("b", 503, None, None, None), 0.75)
    commands = _step(stripe, 0.75)
    assert commands[0] == Drop("b", "busy")
    assert commands[-1] == GiveUp("no holder left")
    assert stripe.stats.failures == 1 and stripe.stats.busy == 2


def test_a_holder_busy_for_spare_uplink_is_asked_again_later() -> None:
    stripe = _stripe("a", "b", "c", width=2)
    _step(stripe, 0.0)
    stripe.receive(Answered("b", 503, None, None, None), 0.25)
    commands = _step(stripe, 0.25)
    # c, still waiting, takes b's place; b is not asked again while a and c work.
    assert {c.holder for c in commands if isinstance(c, Fetch)} == {"c"}
    assert all(c.spare for c in commands if isinstance(c, Fetch))
    stripe.receive(Answered("c", 503, None, None, None), 0.5)
    commands = _step(stripe, 0.5)
    assert not any(isinstance(c, Fetch) and c.holder != "a" for c in commands)
    assert commands[-1] == WakeAt(0.75)  # b's other stream may be over by then
    commands = _step(stripe, 0.75)
    fetches = [c for c in commands if isinstance(c, Fetch)]
    assert fetches and {(c.holder, c.spare) for c in fetches} == {("b", True)}


def test_a_holder_that_sent_bytes_then_said_busy_counts_once_among_contributors() -> None:
    """A holder serves a range, says busy to the next (spare) one, is asked again after
    `busy_retry` and serves again: it is one contributor, not two (the body's log and
    metrics say how many holders it was striped over)."""
    stripe = _stripe("a", "b")
    stripe.receive(NoMoreHolders(), 0.0)
    _step(stripe, 0.0)
    _serve(stripe, "a", 0, 10, 0.25)
    _serve(stripe, "b", 10, 20, 0.25)
    stripe.receive(Answered("b", 503, None, None, None), 0.25)
    assert _step(stripe, 0.25)[0] == Drop("b", "busy")
    stripe.receive(Delivered(20), 0.5)  # the window moves on: there is a range for b
    retry = [c for c in _step(stripe, 0.75) if isinstance(c, Fetch) and c.holder == "b"]
    assert retry and retry[0].spare
    _serve(stripe, "b", retry[0].start, retry[0].end, 0.75)
    assert stripe.stats.contributors == ["a", "b"]


def test_a_silent_holder_is_dropped_at_the_stall_timeout() -> None:
    stripe = _stripe("a", "b", "c")
    assert _step(stripe, 0.0)[-1] == WakeAt(4.0)  # the rate floor's first window
    _answer(stripe, "b", 10, 20, 1.0)
    stripe.receive(Received("b", 5), 1.0)
    commands = _step(stripe, 4.0)
    assert commands[-1] == WakeAt(8.0)  # a: nothing since it was asked at 0
    commands = _step(stripe, 8.0)
    assert commands[0] == Drop("a", "sent nothing for 8s")
    assert _fetches(commands) == [("c", 0, 10), ("c", 20, 30)]
    assert commands[-1] == WakeAt(9.0)  # b's turn: its last byte came at 1


def test_a_trickling_holder_is_dropped_below_the_rate_floor() -> None:
    stripe = _stripe("a", "b", min_rate=1.0, stall_timeout=100.0)  # 4 bytes per 4 s
    _step(stripe, 0.0)
    _answer(stripe, "a", 0, 10, 0.5)
    stripe.receive(Received("a", 3), 1.0)
    _answer(stripe, "b", 10, 20, 0.5)
    stripe.receive(Received("b", 5), 1.0)
    commands = _step(stripe, 4.0)
    assert [c for c in commands if isinstance(c, Drop)] == [Drop("a", "sent less than 1 B/s")]
    stripe.receive(Received("b", 5), 7.0)
    stripe.receive(Answered("b", 206, "bytes 30-39/100", 10, None), 7.0)
    stripe.receive(Received("b", 2), 7.5)
    # b met its quota in its first window (5 + 5 bytes by 4 s), and the floor starts over.
    assert not [c for c in _step(stripe, 7.5) if isinstance(c, Drop)]


def test_a_slow_holder_holding_the_window_back_is_replaced_by_an_idle_one() -> None:
    stripe = _stripe("a", "b", "c")
    _step(stripe, 0.0)
    # b sends both its ranges at 20 bytes/s (done at 1.0); a answers at once, then
    # sends 1 byte of its first range.
    _serve(stripe, "b", 10, 20, 0.5)
    _serve(stripe, "b", 30, 40, 1.0)
    _answer(stripe, "a", 0, 10, 0.0)
    stripe.receive(Received("a", 1), 0.5)
    commands = _step(stripe, 1.0)
    # b is idle and the window is full, held back by a's range. b would have sent it
    # (10 bytes) in 0.5 s: a is judged then, too slow if under a third of b's rate. It
    # sent 1 byte in 1 s: dropped, and its ranges go to b and the spare.
    assert commands[0] == Drop("a", "slower than an idle holder")
    assert _fetches(commands) == [("b", 1, 10), ("c", 20, 30)]
    assert stripe.stats.laggards == 1 and stripe.stats.failures == 0


def test_a_holder_fast_enough_is_kept() -> None:
    stripe = _stripe("a", "b", "c")
    _step(stripe, 0.0)
    _serve(stripe, "b", 10, 20, 0.5)
    _serve(stripe, "b", 30, 40, 1.0)
    _answer(stripe, "a", 0, 10, 0.0)
    stripe.receive(Received("a", 8), 0.75)
    commands = _step(stripe, 1.0)
    # a went at 8 bytes/s so far, over a third of b's 20: judged again when its 8 bytes
    # would fall under that rate, at 0 + 3 * 8 / 20 = 1.2 s.
    assert commands == [WakeAt(1.2)]
    stripe.receive(Received("a", 2), 1.125)
    assert not [c for c in _step(stripe, 1.125) if isinstance(c, Drop)]


def test_a_holder_is_not_judged_before_its_answer_nor_on_one_hiccup() -> None:
    stripe = _stripe("a", "b", "c", piece=10)
    _step(stripe, 0.0)
    _serve(stripe, "b", 10, 20, 0.0625)
    _serve(stripe, "b", 30, 40, 0.125)  # 160 bytes/s: a's 10 bytes in 1/16 s
    # a's head is late (its proof of the blob, say): no verdict on it but the stall.
    assert _step(stripe, 0.5) == [WakeAt(4.0)]
    _answer(stripe, "a", 0, 10, 0.5)
    # Judged no sooner than laggard_after (0.1 s) past its answer.
    assert _step(stripe, 0.5) == [WakeAt(0.6)]
    stripe.receive(Received("a", 10), 0.5625)
    assert not [c for c in _step(stripe, 0.6) if isinstance(c, Drop)]


def test_too_many_failures_is_giving_up() -> None:
    stripe = _stripe("a", "b", "c", "d", width=3, max_failures=3)
    _step(stripe, 0.0)
    for holder in ("a", "b", "c"):
        stripe.receive(HolderFailed(holder, "reset"), 0.25)
    commands = _step(stripe, 0.25)
    # Nothing more is asked of the spare: the body ends here.
    assert not _fetches(commands)
    assert commands[-1] == GiveUp("3 holders failed")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Stripe(replace(LIMITS, width=0), 0, TOTAL, TOTAL, 0.0)


class _SimHolder:
    """A holder in the simulation: sends `speed` bytes a tick, answers busy, or breaks
    after `breaks_after` bytes."""

    def __init__(self, speed: int, *, busy: int = 0, breaks_after: int | None = None) -> None:
        self.speed = speed
        self.busy = busy  # 1: busy to spare-only asks, 2: to every ask
        self.breaks_after = breaks_after
        self.queue: list[list[int]] = []  # [start, end, sent, answered, spare]
        self.sent = 0
        self.dropped = False


class _Simulation:
    """Random holders and a client that reads what it can, on fake time; checks that
    no byte is asked of two holders at once nor past the window, and that every byte
    lands only where its holder was asked to put it, past what the client has read."""

    def __init__(self, seed: int) -> None:
        import random

        self.rng = rng = random.Random(seed)
        self.total = total = rng.randrange(1, 3000)
        self.blob = rng.randbytes(total)
        self.limits = StripeLimits(
            width=rng.randrange(1, 4),
            piece=rng.randrange(1, 90),
            depth=rng.randrange(1, 4),
            stall_timeout=2.0,
            min_rate=0.0,
            rate_window=1.0,
            max_failures=rng.randrange(2, 9),
        )
        self.holders = {
            f"h{i}": _SimHolder(
                rng.randrange(1, 120),
                busy=rng.choice((0, 0, 0, 0, 1, 2)),
                breaks_after=rng.randrange(0, total) if rng.random() < 0.3 else None,
            )
            for i in range(rng.randrange(1, 6))
        }
        self.stripe: Stripe[str] = Stripe(self.limits, 0, total, total, 0.0)
        self.ring = bytearray(self.limits.window)
        self.out = bytearray()
        self.outstanding: dict[int, str] = {}  # every byte asked for, not yet received
        self.now = 0.0

    def run(self) -> None:
        for name in self.holders:
            self.stripe.receive(HolderFound(name), self.now)
        self.stripe.receive(NoMoreHolders(), self.now)
        for _ in range(100_000):
            for command in _step(self.stripe, self.now):
                self._carry_out(command)
            if self.stripe.over is not None:
                return
            self.now += 0.0625
            for name, holder in self.holders.items():
                if not holder.dropped and holder.queue:
                    self._send(name, holder)
            self._read()

    def _carry_out(self, command: StripeCommand[str]) -> None:
        stripe = self.stripe
        if isinstance(command, Fetch):
            assert stripe.sent <= command.start < command.end <= stripe.sent + self.limits.window
            for offset in range(command.start, command.end):
                assert offset not in self.outstanding
                self.outstanding[offset] = command.holder
            holder = self.holders[command.holder]
            if holder.dropped:  # asked again after a busy answer: a new connection
                holder.dropped, holder.queue = False, []
            holder.queue.append([command.start, command.end, 0, 0, command.spare])
        elif isinstance(command, Drop):
            self.holders[command.holder].dropped = True
            for offset in [o for o, h in self.outstanding.items() if h == command.holder]:
                del self.outstanding[offset]

    def _send(self, name: str, holder: _SimHolder) -> None:
        request = holder.queue[0]
        if not request[3]:
            request[3] = 1
            status = 503 if holder.busy == 2 or (holder.busy and request[4]) else 206
            content_range = f"bytes {request[0]}-{request[1] - 1}/{self.total}"
            answer = Answered(name, status, content_range, request[1] - request[0])
            self.stripe.receive(answer, self.now)
            return
        if holder.breaks_after is not None and holder.sent >= holder.breaks_after:
            self.stripe.receive(HolderFailed(name, "broke"), self.now)
            return
        count = min(holder.speed, request[1] - request[0] - request[2])
        start = request[0] + request[2]
        for offset in range(start, start + count):
            assert self.outstanding.pop(offset) == name and offset >= self.stripe.ready
            self.ring[offset % self.limits.window] = self.blob[offset]
        request[2] += count
        holder.sent += count
        self.stripe.receive(Received(name, count), self.now)
        if request[2] == request[1] - request[0]:
            holder.queue.pop(0)

    def _read(self) -> None:
        stripe = self.stripe
        take = min(self.rng.randrange(0, 200), stripe.ready - stripe.sent)
        if take:
            window = self.limits.window
            self.out += bytes(self.ring[(stripe.sent + i) % window] for i in range(take))
            stripe.receive(Delivered(take), self.now)


@pytest.mark.parametrize("seed", range(200))
def test_whatever_holders_do_the_client_gets_the_blob_or_a_give_up(seed: int) -> None:
    simulation = _Simulation(seed)
    simulation.run()
    assert simulation.stripe.over is not None
    assert simulation.blob.startswith(simulation.out)
    if isinstance(simulation.stripe.over, Finished):
        assert simulation.out == simulation.blob
    holders = simulation.holders.values()
    if all(h.busy < 2 and h.breaks_after is None for h in holders):
        # Busy only for spare uplink, and nobody breaks: the body is never given up.
        assert simulation.out == simulation.blob
