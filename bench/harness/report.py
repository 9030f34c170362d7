"""From a run to numbers: per-case statistics, improvements, targets, markdown tables (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.harness.cases import Case
from bench.harness.cpu import CpuShare
from bench.harness.results import Run, case_order
from bench.harness.rollout import update_improvement_bound
from bench.harness.stats import Stats, describe, improvement
from bench.measure import Check

# Spegel v0.0.27 on 50 AKS Standard_D4ds_v5 nodes, update phase, average pull time:
# (baseline ms, Spegel ms, improvement %) from docs/BENCHMARK.md in spegel-org/spegel.
SPEGEL_UPDATE = {
    "10MB-1": (1220, 210, 81.25),
    "10MB-4": (1409, 155, 88.99),
    "100MB-1": (1725, 560, 67.53),
    "100MB-4": (1573, 500, 68.21),
    "1GB-1": (8429, 6682, 20.72),
    "1GB-4": (7310, 5125, 29.89),
}

# The targets for the update phase improvement (average), by image size.
UPDATE_TARGETS = {"10MB": 90.0, "100MB": 80.0, "1GB": 60.0}
# Cold start (the create phase, every node at once): upstream bytes with the mirror
# at most 1.1x the image, and the p50 pull time at most 0.35x of without, for
# 100 MB and larger images.
CREATE_UPSTREAM_TARGET = 1.1
CREATE_P50_TARGET = 0.35
CREATE_TIME_SIZES = frozenset({"100MB", "1GB"})


@dataclass(frozen=True)
class Row:
    case: str
    phase: str
    baseline: Stats | None
    mirror: Stats | None
    upstream: dict[str, float]  # mode -> bytes served / image size

    @property
    def improvement_mean(self) -> float | None:
        if self.baseline is None or self.mirror is None:
            return None
        return improvement(self.baseline.mean, self.mirror.mean)

    @property
    def improvement_p50(self) -> float | None:
        if self.baseline is None or self.mirror is None:
            return None
        return improvement(self.baseline.p50, self.mirror.p50)


def rows(run: Run) -> list[Row]:
    keys = sorted({(p.case, p.phase) for p in run.pulls}, key=lambda k: (case_order(k[0]), k[1]))
    found = []
    for case, phase in keys:
        stats: dict[str, Stats | None] = {}
        for mode in ("baseline", "mirror"):
            times = [
                p.duration for p in run.pulls if (p.case, p.phase, p.mode) == (case, phase, mode)
            ]
            stats[mode] = describe(times) if times else None
        upstream: dict[str, float] = {}
        size = run.image_sizes.get(case)
        for mode in ("baseline", "mirror"):
            served = [
                u.bytes for u in run.upstream if (u.case, u.phase, u.mode) == (case, phase, mode)
            ]
            if served and size:
                upstream[mode] = sum(served) / size
        found.append(Row(case, phase, stats["baseline"], stats["mirror"], upstream))
    return found


def first_batch(run: Run) -> tuple[int, int] | None:
    """(nodes, nodes in the first update batch) of a local run, from its settings."""
    nodes, batch = run.settings.get("nodes"), run.settings.get("first_update_batch")
    return (int(nodes), int(batch)) if nodes and batch else None


def checks(found: list[Row]) -> list[Check]:
    result = []
    for row in found:
        if row.phase == "create":
            result += _create_checks(row)
            continue
        value = row.improvement_mean
        if row.phase != "update" or value is None:
            continue
        target = UPDATE_TARGETS.get(Case.parse(row.case).label)
        if target is not None:
            result.append(Check(f"update improvement {row.case} (avg)", value, ">=", target, "%"))
    return result


def _create_checks(row: Row) -> list[Check]:
    result = []
    upstream = row.upstream.get("mirror")
    if upstream is not None:
        # `<` with a hair of slack: the target is "at most".
        result.append(
            Check(
                f"create upstream bytes {row.case} (x image)",
                upstream,
                "<",
                CREATE_UPSTREAM_TARGET + 1e-9,
            )
        )
    if (
        row.baseline is not None
        and row.mirror is not None
        and row.baseline.p50 > 0
        and Case.parse(row.case).label in CREATE_TIME_SIZES
    ):
        ratio = row.mirror.p50 / row.baseline.p50
        result.append(
            Check(f"create p50 {row.case} (with / without)", ratio, "<", CREATE_P50_TARGET + 1e-9)
        )
    return result


def _stats(stats: Stats | None) -> str:
    if stats is None:
        return "-"
    return f"{stats.mean:.2f} / {stats.p50:.2f} / {stats.p99:.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def upstream_cell(upstream: dict[str, float]) -> str:
    """Bytes the upstream served without / with the mirror, as multiples of the image."""
    parts = [upstream.get(mode) for mode in ("baseline", "mirror")]
    return " / ".join("-" if v is None else f"{v:.1f}x" for v in parts)


def _label(case: str) -> str:
    parsed = Case.parse(case)
    return f"{parsed.label} x{parsed.layers}"


def phase_cpu(run: Run, case: str, mode: str, phase: str) -> CpuShare | None:
    return CpuShare.of(c for c in run.cpu if (c.case, c.mode, c.phase) == (case, mode, phase))


def cpu_markdown(run: Run) -> list[str]:
    """The machine's CPU during each phase (local runs): were its cores the limit?"""
    table = []
    for row in rows(run):
        for mode in ("baseline", "mirror"):
            cpu = phase_cpu(run, row.case, mode, row.phase)
            if cpu is not None:
                table.append(
                    f"| {_label(row.case)} | {row.phase} | {mode} | {cpu.busy:.0%} "
                    f"| {cpu.containerd:.0%} | {cpu.mirror:.0%} | {cpu.clients:.0%} |"
                )
    if not table:
        return []
    cores = run.settings.get("machine", {}).get("nproc", "?")
    return [
        f"**CPU** during the pulls, as a share of the machine's {cores} cores' time"
        " (busy: everything, interrupts included; then the containerd daemons, the"
        " mirrors and the `ctr` clients).",
        "",
        "| image | phase | mode | busy | containerd | mirrors | ctr |",
        "|---|---|---|---|---|---|---|",
        *table,
        "",
    ]


def markdown(run: Run) -> str:
    found = rows(run)
    lines = []
    nodes = run.settings.get("nodes")
    update = [r for r in found if r.phase == "update"]
    create = [r for r in found if r.phase == "create"]
    if update:
        lines += [
            f"**Update phase** (rolling update, {run.settings.get('max_unavailable', '20%')}"
            f" of {nodes or '?'} nodes at a time). Pull time in seconds, avg / p50 / p99.",
            "",
            "| image | without mirror | with mirror | improvement avg | improvement p50 "
            "| Spegel, 50 AKS nodes (avg) | upstream bytes without / with |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in update:
            spegel = SPEGEL_UPDATE.get(row.case)
            spegel_text = (
                f"{spegel[2]:.0f}% ({spegel[0]} -> {spegel[1]} ms)" if spegel is not None else "-"
            )
            lines.append(
                f"| {_label(row.case)} | {_stats(row.baseline)} | {_stats(row.mirror)} "
                f"| {_percent(row.improvement_mean)} | {_percent(row.improvement_p50)} "
                f"| {spegel_text} | {upstream_cell(row.upstream)} |"
            )
        lines.append("")
        bound = first_batch(run)
        if bound is not None:
            limit = update_improvement_bound(*bound)
            lines += [
                f"With {bound[0]} nodes the first batch ({bound[1]} node{'s' * (bound[1] > 1)})"
                " has no peer to pull"
                f" from, so the average update improvement cannot exceed {limit:.0f}%.",
                "",
            ]
    if create:
        lines += [
            "**Create phase** (every node pulls at once). Pull time in seconds,"
            " avg / p50 / p99; upstream bytes as a multiple of the image size.",
            "",
            "| image | without mirror | with mirror | improvement avg "
            "| upstream bytes without / with |",
            "|---|---|---|---|---|",
        ]
        for row in create:
            lines.append(
                f"| {_label(row.case)} | {_stats(row.baseline)} | {_stats(row.mirror)} "
                f"| {_percent(row.improvement_mean)} | {upstream_cell(row.upstream)} |"
            )
        lines.append("")
    lines += cpu_markdown(run)
    found_checks = checks(found)
    if found_checks:
        lines += ["```", *(c.line() for c in found_checks), "```", ""]
    return "\n".join(lines)
