"""The cold-miss core: claim, stream from the claimant, back off, give up (pure, fake time)."""

from __future__ import annotations

from dht import Provider
from dht.claims import Claim, Lost, Refused, Won
from mirror.mirroring.claimbook import ClaimBook
from mirror.mirroring.coldmiss import (
    ClaimIt,
    ColdMiss,
    ColdMissLimits,
    GiveUp,
    Pause,
    Search,
    usable_source,
)

HOLDER = Provider(b"h" * 16, "127.0.0.2", 5001, 5000)
OTHER = Provider(b"o" * 16, "127.0.0.3", 5001, 5000)
KEY = b"k" * 16


def _lost(holder: Provider = HOLDER) -> Lost:
    return Lost(Claim(KEY, holder, 10.0))


def test_first_step_is_a_claim_and_winning_gives_the_404() -> None:
    core = ColdMiss(0.0)
    assert isinstance(core.next_step(0.0), ClaimIt)
    core.claimed(Won(Claim(KEY, HOLDER, 5.0)), 0.01)
    step = core.next_step(0.01)
    assert isinstance(step, GiveUp) and step.won


def test_a_refused_claim_never_breaks_the_pull() -> None:
    core = ColdMiss(0.0)
    core.claimed(Refused("table full"), 0.0)
    step = core.next_step(0.0)
    assert isinstance(step, GiveUp) and step.reason == "refused" and not step.won


def test_lost_searches_with_the_holder() -> None:
    core = ColdMiss(0.0)
    core.claimed(_lost(), 0.0)
    assert core.next_step(0.0) == Search(HOLDER)


def test_a_busy_search_pauses_then_searches_again_without_claiming() -> None:
    core = ColdMiss(0.0, ColdMissLimits(first_pause=0.1))
    core.claimed(_lost(), 0.0)
    core.search_failed(0.0, busy=True)
    assert core.next_step(0.05) == Pause(0.1)
    assert core.next_step(0.1) == Search(HOLDER)


def test_a_failed_search_claims_again_after_a_growing_pause() -> None:
    core = ColdMiss(0.0, ColdMissLimits(first_pause=0.1, max_pause=0.3))
    core.claimed(_lost(), 0.0)
    core.search_failed(1.0, busy=False)
    assert core.next_step(1.0) == Pause(1.1)
    assert isinstance(core.next_step(1.1), ClaimIt)
    core.claimed(_lost(), 1.1)
    core.search_failed(1.2, busy=False)
    assert core.next_step(1.2) == Pause(1.4)  # doubled
    core.next_step(1.4)
    core.claimed(_lost(), 1.4)
    core.search_failed(1.5, busy=False)
    assert core.next_step(1.5) == Pause(1.8)  # capped at max_pause


def test_the_holder_gone_and_its_lease_lapsed_makes_this_node_the_fetcher() -> None:
    core = ColdMiss(0.0)
    core.claimed(_lost(), 0.0)
    core.search_failed(0.1, busy=False)
    step = core.next_step(1.0)
    assert isinstance(step, ClaimIt)
    core.claimed(Won(Claim(KEY, OTHER, 6.0)), 1.0)
    assert core.next_step(1.0) == GiveUp("won")


def test_the_wait_budget_ends_in_the_404() -> None:
    core = ColdMiss(0.0, ColdMissLimits(wait_budget=2.0, busy_budget=2.0, first_pause=5.0))
    core.claimed(_lost(), 0.0)
    core.search_failed(0.5, busy=True)
    assert core.next_step(0.5) == Pause(2.0)  # never past the deadline
    assert core.next_step(2.0) == GiveUp("timeout")
    core.claimed(Won(Claim(KEY, OTHER, 6.0)), 2.1)  # late events change nothing
    assert core.next_step(2.1) == GiveUp("timeout")


def test_inflight_sources_are_usable_only_past_the_offset_unless_they_hold_the_claim() -> None:
    complete = OTHER
    inflight = Provider(b"i" * 16, "127.0.0.4", 5001, 5000, progress=(100, 1000))
    empty_holder = Provider(HOLDER.node_id, HOLDER.host, 5001, 5000, progress=(0, 1000))
    assert usable_source(complete, 500, None)
    assert usable_source(inflight, 99, None)
    assert not usable_source(inflight, 100, None)
    assert not usable_source(empty_holder, 0, None)
    assert usable_source(empty_holder, 0, HOLDER)


def test_the_claim_book_renews_at_a_third_of_the_lease_and_lapses() -> None:
    book = ClaimBook(lease=3.0)
    book.won("sha256:a", 0.0)
    assert book.holds("sha256:a", 0.5)
    assert not book.renew_due("sha256:a", 0.5)
    assert book.renew_due("sha256:a", 1.0)
    book.won("sha256:a", 1.0)
    assert not book.renew_due("sha256:a", 1.5)
    assert not book.holds("sha256:a", 4.0)  # lapsed with its lease
    assert not book.drop("sha256:a")
    book.won("sha256:b", 0.0, expires=10.0)
    assert book.drop("sha256:b") and len(book) == 0


def test_busy_sources_before_any_claim_mean_wait_and_search_not_claim() -> None:
    core = ColdMiss(0.0, ColdMissLimits(first_pause=0.1), busy=True)
    assert core.next_step(0.0) == Pause(0.1)
    assert core.next_step(0.1) == Search(None)
    assert core.claims == 0


def _until_given_up(*, busy: bool) -> tuple[GiveUp, float]:
    """Every search fails (busy or not) and every claim is lost: when does it end?"""
    core = ColdMiss(0.0, ColdMissLimits(wait_budget=2.0, busy_budget=5.0, first_pause=1.0))
    core.claimed(_lost(), 0.0)
    now = 0.0
    while not isinstance(step := core.next_step(now), GiveUp):
        if isinstance(step, Pause):
            now = step.until
        elif isinstance(step, ClaimIt):
            core.claimed(_lost(), now)
        else:
            core.search_failed(now, busy=busy)
    return step, now


def test_busy_answers_keep_the_wait_going_up_to_the_busy_budget() -> None:
    step, now = _until_given_up(busy=True)
    assert step == GiveUp("timeout")
    assert 4.9 <= now <= 5.0  # past the 2 s wait budget, bounded by the busy budget


def test_without_busy_answers_the_wait_budget_holds() -> None:
    step, now = _until_given_up(busy=False)
    assert step == GiveUp("timeout") and now == 2.0
