"""bench soak's reading of a node and its judgement of a phase (pure)."""

from __future__ import annotations

import math

from bench.soak_report import (
    PhaseWindow,
    Sample,
    judge,
    lag_buckets,
    parse_metrics,
    quantile,
    server_errors,
)

TEXT = """# HELP mirror_event_loop_lag_seconds lag
# TYPE mirror_event_loop_lag_seconds histogram
mirror_event_loop_lag_seconds_bucket{le="0.001"} 90.0
mirror_event_loop_lag_seconds_bucket{le="0.05"} 99.0
mirror_event_loop_lag_seconds_bucket{le="+Inf"} 100.0
mirror_event_loop_lag_seconds_count 100.0
http_request_duration_seconds_count{code="200",handler="blob",method="GET"} 40.0
http_request_duration_seconds_count{code="503",handler="blob",method="GET"} 3.0
http_request_duration_seconds_count{code="500",handler="manifest",method="GET"} 1.0
mirror_peer_streams_refused_total 3.0
"""


def _lag(fast: float, medium: float, slow: float) -> dict[str, float]:
    return {
        'mirror_event_loop_lag_seconds_bucket{le="0.001"}': fast,
        'mirror_event_loop_lag_seconds_bucket{le="0.05"}': fast + medium,
        'mirror_event_loop_lag_seconds_bucket{le="+Inf"}': fast + medium + slow,
    }


def test_the_text_format_is_read_and_busy_answers_to_peers_are_not_errors() -> None:
    samples = parse_metrics(TEXT)
    assert samples["mirror_event_loop_lag_seconds_count"] == 100
    assert server_errors(samples) == 1  # the 500; the three 503s were busy answers
    assert lag_buckets(samples) == [(0.001, 90.0), (0.05, 99.0), (math.inf, 100.0)]


def test_the_quantile_is_of_what_the_histogram_gained() -> None:
    before = lag_buckets(_lag(1000, 0, 0))
    after = lag_buckets(_lag(1000 + 10, 80, 10))
    assert quantile(before, after, 0.5) == 0.05
    assert quantile(before, after, 0.99) == math.inf
    assert quantile(before, before, 0.99) == 0.0


def _sample(at: float, rss: float, fds: int, **metrics: float) -> Sample:
    return Sample(at, "node-1", rss, fds, {**_lag(100, 0, 0), **metrics})


def test_a_phase_that_returns_to_the_baseline_passes() -> None:
    baseline = _sample(0, 60, 20)
    window = PhaseWindow("load", 10, 20, 30)
    samples = [baseline, _sample(10, 60, 20), _sample(15, 200, 900), _sample(30, 64, 21)]
    report = judge(window, samples, baseline)
    assert report.passed
    assert report.rss_mib == (60, 200, 64) and report.fds == (20, 900, 21)


def test_memory_or_fds_left_behind_fail() -> None:
    baseline = _sample(0, 60, 20)
    window = PhaseWindow("load", 10, 20, 30)
    report = judge(window, [baseline, _sample(10, 60, 20), _sample(30, 90, 200)], baseline)
    assert [name for name, ok in report.checks if not ok] == [
        "RSS back within 10% of the baseline",
        "fds back within 10% of the baseline",
    ]


def test_a_flood_phase_is_held_to_the_loop_lag_target() -> None:
    baseline = _sample(0, 60, 20)
    window = PhaseWindow("record-flood", 10, 20, 30)
    stalled = Sample(20, "node-1", 60, 20, _lag(150, 0, 50))  # 50 wake-ups past 50 ms
    samples = [baseline, _sample(10, 60, 20), stalled, _sample(30, 60, 20)]
    report = judge(window, samples, baseline, flood=True)
    assert report.lag_p99_s == math.inf
    assert [name for name, ok in report.checks if not ok] == ["loop lag p99 at most 50 ms"]


def test_a_flood_phase_is_held_to_the_record_stores_bound_not_the_baseline() -> None:
    baseline = _sample(0, 70, 20)
    window = PhaseWindow("record-flood", 10, 20, 30)
    held = [baseline, _sample(10, 80, 20), _sample(20, 120, 20), _sample(30, 120, 20)]
    assert judge(window, held, baseline, flood=True).passed  # records kept for their TTL
    over = [baseline, _sample(10, 80, 20), _sample(20, 140, 20), _sample(30, 120, 20)]
    assert [n for n, ok in judge(window, over, baseline, flood=True).checks if not ok] == [
        "RSS under 128 MiB at its peak"
    ]
