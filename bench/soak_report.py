"""What `bench soak` reads off a node and how it judges a phase (pure).

A sample is one scrape of `/metrics` plus the process's RSS and open fds; a
phase's report compares what the node held once the phase settled with what it
held before any load (the baseline), takes the event loop's lag p99 from the
histogram's buckets over the phase, and counts 5xx answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LAG = "mirror_event_loop_lag_seconds"
# Back within this fraction of the baseline once a phase has settled.
RECOVERY = 0.10
# Loop lag p99 while the DHT record flood runs (at most: the histogram's bucket bound).
FLOOD_LAG_P99 = 0.050
# A flood's records stay stored for their TTL (19 min), so memory is judged by its bound
# instead: what a 128 MiB pod holds.
FLOOD_RSS_MIB = 128.0


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


def server_errors(samples: Mapping[str, float]) -> float:
    """Answers with a 5xx status on the registry port (Spegel's request histogram),
    but the 503s that tell a peer this node already streams its share (that peer
    takes another source: flow control, not a failure)."""
    failed = sum(
        value
        for name, value in samples.items()
        if name.startswith("http_request_duration_seconds_count{") and 'code="5' in name
    )
    return failed - samples.get("mirror_peer_streams_refused_total", 0.0)


def lag_buckets(samples: Mapping[str, float]) -> list[tuple[float, float]]:
    """The loop-lag histogram's cumulative buckets, as (upper bound, count)."""
    buckets = []
    prefix = f'{LAG}_bucket{{le="'
    for name, value in samples.items():
        if name.startswith(prefix):
            bound = name[len(prefix) :].removesuffix('"}')
            buckets.append((math.inf if bound == "+Inf" else float(bound), value))
    return sorted(buckets)


def quantile(
    before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]], q: float
) -> float:
    """The q-quantile of what a cumulative histogram gained between two scrapes: the
    upper bound of the first bucket holding it (inf: past the last finite bound)."""
    earlier = dict(before)
    gained = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]
    total = gained[-1][1] if gained else 0.0
    if total <= 0:
        return 0.0
    for bound, count in gained:
        if count >= q * total:
            return bound
    return math.inf


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the soak began
    node: str
    rss_mib: float
    fds: int
    metrics: Mapping[str, float] = field(repr=False)


@dataclass(frozen=True)
class PhaseWindow:
    name: str
    start: float
    end: float  # the load stops here
    settled: float  # the node is judged here


@dataclass(frozen=True)
class PhaseReport:
    phase: str
    node: str
    rss_mib: tuple[float, float, float]  # at the start, peak, once settled
    fds: tuple[int, int, int]
    lag_p99_s: float
    server_errors: int
    baseline_rss_mib: float
    baseline_fds: int
    checks: tuple[tuple[str, bool], ...]

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "node": self.node,
            "rss_mib": list(self.rss_mib),
            "fds": list(self.fds),
            "lag_p99_s": self.lag_p99_s,
            "server_errors": self.server_errors,
            "baseline_rss_mib": self.baseline_rss_mib,
            "baseline_fds": self.baseline_fds,
            "checks": [{"check": name, "passed": ok} for name, ok in self.checks],
        }


def _within(value: float, baseline: float, slack: float) -> bool:
    return value <= baseline * (1 + RECOVERY) + slack


def judge(
    window: PhaseWindow,
    samples: Iterable[Sample],
    baseline: Sample,
    *,
    flood: bool = False,
) -> PhaseReport:
    """One node's phase: the samples from its start to its settle time."""
    during = [s for s in samples if window.start <= s.at <= window.settled]
    if not during:
        raise ValueError(f"no sample of {baseline.node} during {window.name}")
    first, last = during[0], during[-1]
    loaded = [s for s in during if s.at <= window.end] or [last]
    lag = quantile(lag_buckets(first.metrics), lag_buckets(loaded[-1].metrics), 0.99)
    errors = int(server_errors(last.metrics) - server_errors(first.metrics))
    peak_rss = max(s.rss_mib for s in during)
    if flood:
        memory = (f"RSS under {FLOOD_RSS_MIB:.0f} MiB at its peak", peak_rss < FLOOD_RSS_MIB)
    else:
        # 2 MiB and 4 fds of slack: one sample's noise on a tiny baseline.
        memory = (
            f"RSS back within {RECOVERY:.0%} of the baseline",
            _within(last.rss_mib, baseline.rss_mib, 2),
        )
    checks = [
        memory,
        (f"fds back within {RECOVERY:.0%} of the baseline", _within(last.fds, baseline.fds, 4)),
        ("no 5xx answer", errors == 0),
    ]
    if flood:
        checks.append((f"loop lag p99 at most {FLOOD_LAG_P99 * 1000:.0f} ms", lag <= FLOOD_LAG_P99))
    return PhaseReport(
        window.name,
        baseline.node,
        (first.rss_mib, peak_rss, last.rss_mib),
        (first.fds, max(s.fds for s in during), last.fds),
        lag,
        errors,
        baseline.rss_mib,
        baseline.fds,
        tuple(checks),
    )
