"""Admission on the registry port: counts in, verdicts out (no sockets)."""

from __future__ import annotations

import pytest

from mirror.options import RegistryOptions
from mirror.server.admission import (
    DEFAULT_CLIENT_CONNECTIONS,
    FDS_PER_CONNECTION,
    LOBBY,
    Admission,
    Limits,
    Seat,
)
from mirror.server.reclaim import FloodWatch


def test_one_client_at_its_limit_goes_to_the_lobby_and_others_are_still_served() -> None:
    admission = Admission(Limits(connections=10, per_client=3, lobby=4, lobby_per_client=2))
    assert [admission.admit("10.0.0.1").seat for _ in range(3)] == [Seat.SERVE] * 3
    first = admission.admit("10.0.0.1")
    assert (first.seat, first.reason, first.evict) == (Seat.LOBBY, "client", None)
    assert admission.admit("10.0.0.2").seat is Seat.SERVE
    second = admission.admit("10.0.0.1")
    assert (second.seat, second.evict) == (Seat.LOBBY, None)
    # Two lobby places per address: the third makes room by closing the oldest.
    third = admission.admit("10.0.0.1")
    assert (third.seat, third.reason, third.evict) == (Seat.LOBBY, "client", first.ticket)
    assert (admission.serving, admission.lobby) == (4, 2)


def test_a_full_lobby_evicts_the_oldest_so_the_newest_is_always_heard() -> None:
    admission = Admission(Limits(connections=2, per_client=0, lobby=2, lobby_per_client=8))
    assert admission.admit("a").seat is Seat.SERVE
    assert admission.admit("b").seat is Seat.SERVE
    c = admission.admit("c")
    assert (c.seat, c.reason, c.evict) == (Seat.LOBBY, "capacity", None)
    d = admission.admit("d")
    assert d.evict is None
    probe = admission.admit("kubelet")
    assert (probe.seat, probe.evict) == (Seat.LOBBY, c.ticket)
    assert admission.lobby == 2
    # The evicted one's own release later changes nothing.
    admission.release("c", c)
    assert admission.lobby == 2
    admission.release("kubelet", probe)
    assert admission.lobby == 1


def test_one_address_flooding_the_lobby_evicts_only_its_own() -> None:
    admission = Admission(Limits(connections=1, per_client=0, lobby=10, lobby_per_client=2))
    admission.admit("holder")
    kubelet = admission.admit("10.0.0.9")
    for _ in range(50):
        flood = admission.admit("10.0.0.66")
        assert flood.evict != kubelet.ticket
    assert admission.lobby == 3


def test_without_a_lobby_past_the_limits_is_refused() -> None:
    admission = Admission(Limits(connections=1, per_client=0, lobby=0))
    admission.admit("a")
    refused = admission.admit("b")
    assert (refused.seat, refused.reason) == (Seat.REFUSE, "capacity")


def test_released_slots_are_given_again_and_forgotten() -> None:
    admission = Admission(Limits(connections=1, per_client=1, lobby=1, lobby_per_client=1))
    served = admission.admit("a")
    waiting = admission.admit("a")
    assert waiting.seat is Seat.LOBBY
    admission.release("a", waiting)
    admission.release("a", served)
    assert (admission.serving, admission.lobby, admission.held_by("a")) == (0, 0, 0)
    assert admission.admit("b").seat is Seat.SERVE


def test_no_per_client_limit_with_zero() -> None:
    admission = Admission(Limits(connections=100, per_client=0))
    assert all(admission.admit("one").seat is Seat.SERVE for _ in range(100))


@pytest.mark.parametrize("nofile", [512, 1024, 20_000, 65_536, 1_048_576])
def test_the_connection_limit_keeps_every_descriptor_within_rlimit_nofile(nofile: int) -> None:
    limits = Limits.for_descriptors(nofile)
    # Every served connection at its most (socket + peer socket + splice pipe), the
    # lobby, and a reserve for the rest of the process, within the process's limit.
    worst = limits.connections * FDS_PER_CONNECTION + LOBBY
    assert worst <= nofile - 192
    assert limits.connections >= 1


def test_at_twenty_thousand_descriptors_the_issues_flood_cannot_exhaust_them() -> None:
    # 11,000 downloads that never read held a socket and a file each: 22,000 fds.
    limits = Limits.for_descriptors(20_000)
    assert limits.connections * 2 < 20_000
    assert limits.connections < 11_000


def test_the_flag_default_is_the_admission_default() -> None:
    assert RegistryOptions().registry_client_connections == DEFAULT_CLIENT_CONNECTIONS


def test_a_flood_is_reclaimed_once_it_has_drained_and_settled() -> None:
    watch = FloodWatch(flood=100)
    for open_now in range(1, 501):
        watch.opened(open_now)
    assert not watch.due(450)
    assert not watch.due(450)  # settled, but not enough gone
    assert not watch.due(400)  # still going down
    assert watch.due(400)
    watch.reclaimed(400)
    assert not watch.due(350)
    assert not watch.due(0)
    assert watch.due(0)
    watch.reclaimed(0)
    assert not watch.due(0)
