"""Create-phase pull time against node count, one measured run per count (pure).

The cold-start issue's scaling target: with the mirror the p50 grows at most
1.3x from the smallest cluster to the largest, while without it grows with the
node count (the upstream link is shared: at least half as fast, here).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bench.harness.report import phase_cpu, rows, upstream_cell
from bench.harness.results import Run
from bench.measure import Check

MIRROR_GROWTH_TARGET = 1.3


@dataclass(frozen=True)
class ScalingPoint:
    nodes: int
    case: str
    baseline_p50: float
    mirror_p50: float
    upstream: dict[str, float]  # mode -> bytes served / image size
    mirror_cpu_busy: float | None = None  # the machine's cores, busy share, with the mirror

    @property
    def ratio(self) -> float:
        return self.mirror_p50 / self.baseline_p50


def points(runs: Iterable[Run]) -> list[ScalingPoint]:
    """One point per run and case measured both ways, by node count then case."""
    found = []
    for run in runs:
        nodes = run.settings.get("nodes")
        if not isinstance(nodes, int):
            raise ValueError("a result without settings.nodes cannot be placed by node count")
        for row in rows(run):
            if row.phase != "create" or row.baseline is None or row.mirror is None:
                continue
            cpu = phase_cpu(run, row.case, "mirror", "create")
            found.append(
                ScalingPoint(
                    nodes,
                    row.case,
                    row.baseline.p50,
                    row.mirror.p50,
                    row.upstream,
                    None if cpu is None else cpu.busy,
                )
            )
    return sorted(found, key=lambda p: (p.case, p.nodes))


def checks(found: list[ScalingPoint]) -> list[Check]:
    """Per case measured at two node counts or more: the growth from fewest to most."""
    result = []
    for case in sorted({p.case for p in found}):
        series = [p for p in found if p.case == case]
        if len({p.nodes for p in series}) < 2:
            continue
        first, last = series[0], series[-1]
        span = f"{first.nodes} -> {last.nodes} nodes"
        result.append(
            Check(
                f"{case} create p50 with the mirror, growth {span}",
                last.mirror_p50 / first.mirror_p50,
                "<",
                MIRROR_GROWTH_TARGET + 1e-9,  # "at most"
            )
        )
        # Without the mirror the shared upstream link is the limit: the time grows
        # with the node count, at least half as fast as it.
        result.append(
            Check(
                f"{case} create p50 without the mirror, growth {span}",
                last.baseline_p50 / first.baseline_p50,
                ">=",
                last.nodes / first.nodes / 2,
            )
        )
    return result


def markdown(found: list[ScalingPoint]) -> str:
    lines = [
        "| image | nodes | without mirror p50 (s) | with mirror p50 (s) | with / without "
        "| upstream bytes without / with | CPU busy with mirror |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in found:
        busy = "-" if p.mirror_cpu_busy is None else f"{p.mirror_cpu_busy:.0%}"
        lines.append(
            f"| {p.case} | {p.nodes} | {p.baseline_p50:.2f} | {p.mirror_p50:.2f} "
            f"| {p.ratio:.2f}x | {upstream_cell(p.upstream)} | {busy} |"
        )
    return "\n".join(lines)
