"""The race core on fake time: every transition, no sockets, no Trio.

Providers are plain strings; `now` is whatever the test says it is. Times are
binary fractions, so that deadlines compare exactly.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from mirror.mirroring.race import (
    Abandon,
    AttemptFailed,
    Done,
    Exhausted,
    HeadReady,
    ProviderFound,
    Race,
    RaceCommand,
    RaceLimits,
    Start,
    WakeAt,
)

LIMITS = RaceLimits(resolve_timeout=0.25, resolve_retries=3, hedge_delay=0.5, head_timeout=4.0)


def _race(now: float = 0.0, **changes: Any) -> Race[str]:
    return Race(replace(LIMITS, **changes), now)


def _step(race: Race[str], now: float) -> list[RaceCommand[str]]:
    """Every command up to the next wait or the end."""
    commands = []
    while True:
        command = race.next_command(now)
        commands.append(command)
        if isinstance(command, WakeAt | Done):
            return commands


def _found(race: Race[str], now: float, *providers: str) -> None:
    for provider in providers:
        race.receive(ProviderFound(provider), now)


def test_with_nothing_known_it_waits_the_resolve_timeout() -> None:
    race = _race(now=10.0)
    assert _step(race, 10.0) == [WakeAt(10.25)]


def test_the_first_provider_starts_at_once() -> None:
    race = _race()
    assert _step(race, 0.0) == [WakeAt(0.25)]
    _found(race, 0.125, "a")
    # Nothing else to hedge with: the only timer left is a's head timeout.
    assert _step(race, 0.125) == [Start("a"), WakeAt(4.125)]


def test_the_first_head_wins_with_its_latency() -> None:
    race = _race()
    _found(race, 0.0, "a")
    _step(race, 0.0)
    race.receive(HeadReady("a"), 0.0625)
    assert _step(race, 0.0625) == [Done("a", "won", 0.0625)]
    assert race.done == Done("a", "won", 0.0625)


def test_a_second_provider_is_hedged_after_the_delay() -> None:
    race = _race()
    _found(race, 0.0, "a", "b", "c")
    assert _step(race, 0.0) == [Start("a"), WakeAt(0.5)]
    assert _step(race, 0.25) == [WakeAt(0.5)]
    assert _step(race, 0.5) == [Start("b"), WakeAt(1.0)]
    race.receive(HeadReady("b"), 0.75)
    assert _step(race, 0.75) == [Done("b", "won", 0.25)]


def test_a_provider_found_after_the_hedge_delay_starts_at_once() -> None:
    race = _race()
    _found(race, 0.0, "a")
    _step(race, 0.0)
    _found(race, 2.0, "b")
    assert _step(race, 2.0) == [Start("b"), WakeAt(4.0)]


def test_a_late_head_after_the_end_changes_nothing() -> None:
    race = _race()
    _found(race, 0.0, "a", "b")
    _step(race, 0.0)
    _step(race, 0.5)
    race.receive(HeadReady("a"), 0.75)
    assert _step(race, 0.75) == [Done("a", "won", 0.75)]
    race.receive(HeadReady("b"), 0.875)
    race.receive(AttemptFailed("b", "reset"), 0.875)
    _found(race, 0.875, "c")
    race.receive(Exhausted(), 0.875)
    assert _step(race, 9.0) == [Done("a", "won", 0.75)]


def test_a_failure_starts_the_next_provider_without_waiting_for_the_hedge() -> None:
    race = _race()
    _found(race, 0.0, "a", "b")
    assert _step(race, 0.0) == [Start("a"), WakeAt(0.5)]
    race.receive(AttemptFailed("a", "connection refused"), 0.125)
    assert _step(race, 0.125) == [Start("b"), WakeAt(4.125)]
    race.receive(HeadReady("b"), 0.25)
    assert _step(race, 0.25) == [Done("b", "won", 0.125)]


def test_retries_bound_the_attempts() -> None:
    race = _race(resolve_retries=2)
    _found(race, 0.0, "a", "b", "c")
    assert _step(race, 0.0) == [Start("a"), WakeAt(0.5)]
    assert _step(race, 0.5) == [Start("b"), WakeAt(4.0)]
    race.receive(AttemptFailed("a", "refused"), 1.0)
    assert _step(race, 1.0) == [WakeAt(4.5)]  # c is not tried: two attempts are the limit
    race.receive(AttemptFailed("b", "refused"), 1.5)
    assert _step(race, 1.5) == [Done(None, "retries")]


def test_the_resolve_timeout_ends_a_race_with_nobody_found() -> None:
    race = _race()
    assert _step(race, 0.0) == [WakeAt(0.25)]
    assert _step(race, 0.125) == [WakeAt(0.25)]
    assert _step(race, 0.25) == [Done(None, "resolve-timeout")]


def test_the_resolve_timeout_restarts_when_the_last_attempt_fails() -> None:
    race = _race()
    _found(race, 0.0, "a")
    _step(race, 0.0)
    race.receive(AttemptFailed("a", "refused"), 1.0)
    assert _step(race, 1.0) == [WakeAt(1.25)]
    _found(race, 1.125, "b")
    assert _step(race, 1.125) == [Start("b"), WakeAt(5.125)]
    race.receive(AttemptFailed("b", "refused"), 2.0)
    assert _step(race, 2.0) == [WakeAt(2.25)]
    assert _step(race, 2.25) == [Done(None, "resolve-timeout")]


def test_exhausted_with_nothing_to_try_is_a_miss_at_once() -> None:
    race = _race()
    race.receive(Exhausted(), 0.125)
    assert _step(race, 0.125) == [Done(None, "exhausted")]


def test_exhausted_waits_for_the_attempt_in_flight() -> None:
    race = _race()
    _found(race, 0.0, "a")
    race.receive(Exhausted(), 0.0)
    assert _step(race, 0.0) == [Start("a"), WakeAt(4.0)]
    race.receive(AttemptFailed("a", "answered 404"), 0.125)
    assert _step(race, 0.125) == [Done(None, "exhausted")]


def test_the_budget_ends_the_race_whatever_is_in_flight() -> None:
    race = _race(budget=1.5)
    _found(race, 0.0, "a")
    race.receive(Exhausted(), 0.0)
    # The budget runs out before a's head timeout: it is the wake-up.
    assert _step(race, 0.0) == [Start("a"), WakeAt(1.5)]
    assert _step(race, 1.5) == [Done(None, "budget")]
    race.receive(HeadReady("a"), 1.625)
    assert _step(race, 1.625) == [Done(None, "budget")]


def test_a_budget_equal_to_the_head_timeout_is_a_miss() -> None:
    # The shape of the bug this core fixed: both run out at the same instant.
    race = _race(budget=0.25, head_timeout=0.25)
    _found(race, 0.0, "a")
    assert _step(race, 0.0) == [Start("a"), WakeAt(0.25)]
    assert _step(race, 0.25) == [Done(None, "budget")]


def test_the_budget_bounds_waiting_for_providers_too() -> None:
    race = _race(budget=0.25, resolve_timeout=1.0)
    assert _step(race, 0.0) == [WakeAt(0.25)]
    assert _step(race, 0.25) == [Done(None, "budget")]


def test_without_a_budget_nothing_has_a_deadline_of_its_own() -> None:
    race = _race(head_timeout=math.inf)
    _found(race, 0.0, "a")
    race.receive(Exhausted(), 0.0)
    assert _step(race, 0.0) == [Start("a"), WakeAt(math.inf)]


def test_an_overdue_head_is_abandoned_and_the_next_provider_starts() -> None:
    race = _race(head_timeout=0.5, hedge_delay=1.0)
    _found(race, 0.0, "a", "b")
    assert _step(race, 0.0) == [Start("a"), WakeAt(0.5)]
    assert _step(race, 0.5) == [Abandon("a"), Start("b"), WakeAt(1.0)]
    # The abandoned attempt's head, had it slipped through, is not a winner.
    race.receive(HeadReady("a"), 0.625)
    assert race.done is None
    race.receive(HeadReady("b"), 0.75)
    assert _step(race, 0.75) == [Done("b", "won", 0.25)]


def test_only_overdue_heads_end_at_the_head_timeout() -> None:
    race = _race(head_timeout=0.25)
    _found(race, 0.0, "a")
    race.receive(Exhausted(), 0.0)
    _step(race, 0.0)
    assert _step(race, 0.25) == [Abandon("a"), Done(None, "exhausted")]


def test_a_provider_found_twice_is_tried_once() -> None:
    race = _race()
    _found(race, 0.0, "a", "a")
    race.receive(Exhausted(), 0.0)
    assert _step(race, 0.0) == [Start("a"), WakeAt(4.0)]
    race.receive(AttemptFailed("a", "refused"), 0.125)
    assert _step(race, 0.125) == [Done(None, "exhausted")]


def test_a_failure_for_an_attempt_not_in_flight_is_ignored() -> None:
    race = _race()
    _found(race, 0.0, "a")
    _step(race, 0.0)
    race.receive(AttemptFailed("z", "never started"), 0.125)
    assert _step(race, 0.125) == [WakeAt(4.0)]


def test_no_retries_is_a_miss_at_once() -> None:
    race = _race(resolve_retries=0)
    _found(race, 0.0, "a")
    assert _step(race, 0.0) == [Done(None, "retries")]


def _fail_each_started(race: Race[str], now: float, *, unreachable: bool) -> list[str]:
    """Fail every attempt on a provider named dead* or bad* as it starts; the
    providers started, in order."""
    started = []
    while True:
        command = race.next_command(now)
        if not isinstance(command, Start):
            return started
        started.append(command.provider)
        if not command.provider.startswith(("dead", "bad")):
            return started
        race.receive(AttemptFailed(command.provider, "refused", unreachable), now)


def test_addresses_nobody_answers_at_are_not_retries() -> None:
    race = _race()
    dead = [f"dead{i}" for i in range(6)]
    _found(race, 0.0, *dead, "good")
    assert _fail_each_started(race, 0.0, unreachable=True) == [*dead, "good"]
    assert _step(race, 0.0) == [WakeAt(4.0)]


def test_peers_that_answered_badly_are_retries() -> None:
    race = _race()
    _found(race, 0.0, "bad1", "bad2", "bad3", "good")
    assert _fail_each_started(race, 0.0, unreachable=False) == ["bad1", "bad2", "bad3"]
    assert _step(race, 0.0) == [Done(None, "retries")]


def test_unreachable_addresses_are_bounded_too() -> None:
    race = _race(unreachable_allowance=4)
    _found(race, 0.0, *[f"dead{i}" for i in range(10)])
    # The allowance, then the retries.
    assert len(_fail_each_started(race, 0.0, unreachable=True)) == 4 + 3
    assert _step(race, 0.0) == [Done(None, "retries")]
