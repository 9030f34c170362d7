"""Claims on fake time: first claim wins, renew, release, lapse, bounds."""

from __future__ import annotations

from dht.claims import ClaimTable, Lost, Refused, Won
from dht.messages import Provider

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
A = Provider(b"a" * 32, "127.0.0.1", 5001, 5000)
B = Provider(b"b" * 32, "127.0.0.2", 5001, 5000)
C = Provider(b"c" * 32, "127.0.0.3", 5001, 5000)


def test_first_claim_wins_and_later_claimants_learn_the_holder() -> None:
    table = ClaimTable()
    first = table.claim(KEY, A, 0.0, 5.0)
    assert isinstance(first, Won) and first.claim.expires == 5.0
    second = table.claim(KEY, B, 1.0, 5.0)
    assert isinstance(second, Lost) and second.claim.holder == A
    assert isinstance(table.claim(OTHER_KEY, B, 1.0, 5.0), Won)  # other keys are free


def test_the_holder_renews() -> None:
    table = ClaimTable()
    table.claim(KEY, A, 0.0, 5.0)
    renewed = table.claim(KEY, A, 4.0, 5.0)
    assert isinstance(renewed, Won) and renewed.claim.expires == 9.0
    assert isinstance(table.claim(KEY, B, 8.0, 5.0), Lost)


def test_a_lapsed_claim_is_taken_by_the_next_claimant() -> None:
    table = ClaimTable()
    table.claim(KEY, A, 0.0, 5.0)
    taken = table.claim(KEY, B, 5.0, 5.0)
    assert isinstance(taken, Won) and taken.claim.holder == B
    assert isinstance(table.claim(KEY, A, 6.0, 5.0), Lost)


def test_only_the_holder_releases() -> None:
    table = ClaimTable()
    table.claim(KEY, A, 0.0, 5.0)
    assert not table.release(KEY, B, 1.0)
    assert table.get(KEY, 1.0) is not None
    assert table.release(KEY, A, 1.0)
    assert table.get(KEY, 1.0) is None
    assert isinstance(table.claim(KEY, B, 1.0, 5.0), Won)


def test_a_forged_holder_with_the_same_id_elsewhere_is_not_the_holder() -> None:
    table = ClaimTable()
    table.claim(KEY, A, 0.0, 5.0)
    forged = Provider(A.node_id, "127.0.0.9", A.udp_port, A.registry_port)
    assert isinstance(table.claim(KEY, forged, 1.0, 5.0), Lost)
    assert not table.release(KEY, forged, 1.0)


def test_leases_are_capped() -> None:
    table = ClaimTable(max_lease=10.0)
    answer = table.claim(KEY, A, 0.0, 1e9)
    assert isinstance(answer, Won) and answer.claim.expires == 10.0


def test_bounded_per_claimant_and_in_total() -> None:
    table = ClaimTable(max_claims=3, max_per_claimant=2)
    assert isinstance(table.claim(b"1" * 32, A, 0.0, 5.0), Won)
    assert isinstance(table.claim(b"2" * 32, A, 0.0, 5.0), Won)
    assert isinstance(table.claim(b"3" * 32, A, 0.0, 5.0), Refused)
    assert isinstance(table.claim(b"3" * 32, B, 0.0, 5.0), Won)
    assert isinstance(table.claim(b"4" * 32, C, 0.0, 5.0), Refused)  # full
    assert isinstance(table.claim(b"4" * 32, C, 5.0, 5.0), Won)  # the rest lapsed
    assert len(table) == 1
    assert isinstance(table.claim(b"5" * 32, A, 5.0, 5.0), Won)  # A's count came back down
