"""The WAN relay's shaping: token bucket with debt, and the queue sized to the link."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.kit.wan import CHUNK, LinkSpec, TokenBucket, queue_chunks


def test_burst_passes_at_once_then_senders_queue_behind_the_debt() -> None:
    bucket = TokenBucket(rate=100.0, burst=50.0, now=0.0)
    assert bucket.reserve(50, now=0.0) == 0.0
    assert bucket.reserve(50, now=0.0) == pytest.approx(0.5)
    # A third sender at the same instant waits for both before it.
    assert bucket.reserve(100, now=0.0) == pytest.approx(1.5)


def test_tokens_refill_at_the_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=50.0, now=0.0)
    bucket.reserve(50, now=0.0)
    # 0.2 s refilled 20 tokens; 30 wanted: 10 in debt, paid off in 0.1 s.
    assert bucket.reserve(30, now=0.2) == pytest.approx(0.1)
    assert bucket.tokens == pytest.approx(-10.0)
    assert bucket.reserve(0, now=10.0) == 0.0
    assert bucket.tokens == pytest.approx(50.0)  # capped at the burst


def test_a_reservation_larger_than_the_burst_waits_for_its_excess() -> None:
    bucket = TokenBucket(rate=1000.0, burst=100.0, now=5.0)
    assert bucket.reserve(1100, now=5.0) == pytest.approx(1.0)


def test_the_clock_going_backwards_adds_no_tokens() -> None:
    bucket = TokenBucket(rate=10.0, burst=10.0, now=1.0)
    bucket.reserve(10, now=1.0)
    assert bucket.reserve(10, now=0.5) == pytest.approx(1.0)


@given(
    st.lists(
        st.tuples(st.integers(0, 5000), st.floats(0, 0.5, allow_nan=False)),
        min_size=1,
        max_size=60,
    )
)
def test_long_run_rate_never_exceeds_the_cap(steps: list[tuple[int, float]]) -> None:
    """Whatever the arrivals, by the time a reservation may be sent, at most
    burst + rate * elapsed bytes have been let through."""
    rate, burst = 1000.0, 2000.0
    bucket = TokenBucket(rate, burst, now=0.0)
    now, sent = 0.0, 0
    for size, pause in steps:
        now += pause
        wait = bucket.reserve(size, now)
        assert wait >= 0
        sent += size
        assert sent <= burst + rate * (now + wait) + 1e-6


def test_bucket_needs_a_rate_and_a_burst() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0, now=0)


def test_queue_holds_one_bandwidth_delay_product() -> None:
    link = LinkSpec(rate=100e6, rtt=0.020)
    assert link.one_way == pytest.approx(0.010)
    # 100 MB/s x 10 ms = 1 MB = 15.3 chunks of 64 KiB, rounded up, plus 2 of slack.
    assert queue_chunks(link) == 18
    assert queue_chunks(LinkSpec(rate=100e6, rtt=0)) == 2
    assert queue_chunks(LinkSpec(rate=0, rtt=0.02)) == 64
    assert CHUNK == 65536


def test_link_description() -> None:
    assert LinkSpec().describe() == "100 MB/s each way, 20 ms round trip"
    assert LinkSpec(rate=0, rtt=0.001).describe() == "unlimited each way, 1 ms round trip"
