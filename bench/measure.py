"""Numbers from repeated runs: median (min-max) summaries, run-by-run ratios, targets.

All pure. wrk's output is read in `bench.wrk`, `/proc` in `bench.procstat`,
and the rounds themselves are run by `bench.runner`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Summary:
    median: float
    min: float
    max: float
    n: int

    def format(self, digits: int = 0) -> str:
        return f"{self.median:,.{digits}f} ({self.min:,.{digits}f}-{self.max:,.{digits}f})"


def summarize(values: Iterable[float]) -> Summary:
    data = list(values)
    if not data:
        raise ValueError("nothing to summarize")
    return Summary(statistics.median(data), min(data), max(data), len(data))


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Run-by-run ratios of measurements taken side by side (repeat i with repeat i)."""
    return [a / b for a, b in zip(numerators, denominators, strict=True) if b > 0]


@dataclass(frozen=True)
class Check:
    """One target: `value` compared with `threshold` by `op` (">=" or "<")."""

    name: str
    value: float
    op: str
    threshold: float
    unit: str = "x"

    @property
    def passed(self) -> bool:
        if self.op == ">=":
            return self.value >= self.threshold
        if self.op == "<":
            return self.value < self.threshold
        raise ValueError(f"unknown comparison {self.op!r}")

    def line(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return (
            f"[{mark}] {self.name}: {self.value:.2f}{self.unit} "
            f"(target {self.op} {self.threshold:g}{self.unit})"
        )

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}
