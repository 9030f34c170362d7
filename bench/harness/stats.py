"""Pull-time statistics: average, p50, p99 and Spegel's improvement formula (pure)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from bench.measure import summarize


def percentile(values: Iterable[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, Excel's PERCENTILE.INC)."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    rank = (len(data) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


@dataclass(frozen=True)
class Stats:
    n: int
    mean: float
    p50: float
    p99: float
    min: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def describe(values: Iterable[float]) -> Stats:
    data = list(values)
    spread = summarize(data)  # median, min, max; raises on no data
    return Stats(
        n=spread.n,
        mean=statistics.fmean(data),
        p50=spread.median,
        p99=percentile(data, 99),
        min=spread.min,
        max=spread.max,
    )


def improvement(baseline: float, variant: float) -> float:
    """`(baseline - variant) / baseline * 100`, as Spegel's benchmark page computes it."""
    if baseline <= 0:
        raise ValueError("baseline must be positive")
    return (baseline - variant) / baseline * 100
