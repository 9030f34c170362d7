"""What `python -m bench serve` reports: medians, run-by-run ratios, targets, tables, notes.

Pure: everything here is computed from the kept `Sample`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.measure import Check, Summary, paired_ratios, summarize
from bench.serve_plan import DISTRIBUTION, LABELS, MIRROR, NGINX, SERVERS, Sample, Scenario

RSS_TARGET_MIB = 100.0
NA = "n/a"
# Above this, something else on the machine competed with the run for CPU.
OTHER_CPU_WARN_PCT = 25.0

Stats = dict[str, dict[str, Summary]]  # scenario -> server -> summary


def noisy(sample: Sample) -> bool:
    """Other load on the machine took more than OTHER_CPU_WARN_PCT of a core."""
    return sample.other_cpu_pct > OTHER_CPU_WARN_PCT


def progress_line(sample: Sample, total_repeats: int) -> str:
    errors = sample.wrk["non_2xx_3xx"] + sum(sample.wrk["socket_errors"].values())
    warn = f"  !! {errors} errors" if errors else ""
    if noisy(sample):
        warn += f"  !! other load {sample.other_cpu_pct:.0f}% of a core"
    return (
        f"    [{sample.repeat + 1}/{total_repeats}] {sample.scenario:<12} "
        f"{LABELS[sample.server]:<13}{sample.value:>11,.0f} {sample.unit:<6}"
        f"  wrk cpu {sample.client_cpu_pct:3.0f}%  server cpu {sample.server_cpu_pct:3.0f}%"
        f"  rss {sample.rss_max_mib[sample.server]:6.1f} MiB{warn}"
    )


# Summaries, ratios, targets.


def values(samples: Sequence[Sample], scenario: str, server: str) -> list[float]:
    ordered = sorted(
        (s for s in samples if s.scenario == scenario and s.server == server),
        key=lambda s: s.repeat,
    )
    return [s.value for s in ordered]


def summaries(samples: Sequence[Sample], plan: Sequence[Scenario]) -> Stats:
    """Each measured scenario's servers (one the run left out has no entry)."""
    return {
        sc.key: {server: summarize(values(samples, sc.key, server)) for server in sc.servers}
        for sc in plan
        if any(sample.scenario == sc.key for sample in samples)
    }


def rss_summary(samples: Sequence[Sample]) -> dict[str, float]:
    """The highest VmRSS seen of each server over every run."""
    out: dict[str, float] = {}
    for sample in samples:
        for name, mib in sample.rss_max_mib.items():
            out[name] = max(out.get(name, 0.0), mib)
    return out


@dataclass(frozen=True)
class Ratio:
    scenario: str
    numerator: str
    denominator: str
    of_medians: float
    paired: Summary


def ratio(samples: Sequence[Sample], stats: Stats, scenario: str, a: str, b: str) -> Ratio:
    paired = paired_ratios(values(samples, scenario, a), values(samples, scenario, b))
    median_b = stats[scenario][b].median
    of_medians = stats[scenario][a].median / median_b if median_b else float("inf")
    return Ratio(scenario, a, b, of_medians, summarize(paired or [of_medians]))


def ratios(samples: Sequence[Sample], stats: Stats) -> list[Ratio]:
    return [
        ratio(samples, stats, sc, MIRROR, other)
        for sc in ("blob-1", "blob-8", "blob-1-curl", "blob-8-curl", "manifest-32")
        for other in (NGINX, DISTRIBUTION)
        if sc in stats
    ]


def checks(found: Sequence[Ratio], rss: dict[str, float]) -> list[Check]:
    by_key = {(r.scenario, r.denominator): r.paired.median for r in found}
    wanted = [
        ("blob-1", NGINX, 1.0, "blob throughput, 1 client (wrk), mirror / nginx"),
        ("blob-8", NGINX, 1.0, "blob throughput, 8 clients (wrk), mirror / nginx"),
        ("blob-1-curl", NGINX, 1.0, "blob throughput, 1 curl, mirror / nginx"),
        ("blob-8-curl", NGINX, 1.0, "blob throughput, 8 curls, mirror / nginx"),
        # (The 0.6x-nginx manifest target is dropped: one Python process cannot reach it,
        # and no pull is limited by it.)
        ("manifest-32", DISTRIBUTION, 10.0, "manifest requests/s, mirror / Distribution"),
    ]
    out = [
        Check(name, by_key[(sc, den)], ">=", threshold)
        for sc, den, threshold, name in wanted
        if (sc, den) in by_key
    ]
    out.append(Check("mirror VmRSS max", rss.get(MIRROR, 0.0), "<", RSS_TARGET_MIB, " MiB"))
    return out


# The tables.


def _median_cell(stats: dict[str, Summary], server: str) -> str:
    return stats[server].format() if server in stats else NA


def _ratio_cell(found: Sequence[Ratio], scenario: str, den: str) -> str:
    for r in found:
        if r.scenario == scenario and r.denominator == den:
            return r.paired.format(2).replace(" (", "x (")
    return NA


def results_table(plan: Sequence[Scenario], stats: Stats, found: Sequence[Ratio]) -> list[str]:
    lines = [
        "| measurement | nginx | Distribution | mirror | mirror / nginx | mirror / Distribution |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for sc in plan:
        if sc.key not in stats:
            continue  # not measured in this run
        row = [f"{sc.title} ({sc.unit})"]
        row += [_median_cell(stats[sc.key], s) for s in SERVERS]
        row += [_ratio_cell(found, sc.key, den) for den in (NGINX, DISTRIBUTION)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def median_of(samples: Sequence[Sample], scenario: str, server: str, attr: str) -> str:
    picked = [getattr(s, attr) for s in samples if s.scenario == scenario and s.server == server]
    return f"{summarize(picked).median:.0f}%" if picked else NA


def cpu_table(samples: Sequence[Sample], plan: Sequence[Scenario]) -> list[str]:
    head = " | ".join(f"{LABELS[s]}: wrk / server / other" for s in SERVERS)
    lines = [f"| CPU, median | {head} |", "|---|---:|---:|---:|"]
    attrs = ("client_cpu_pct", "server_cpu_pct", "other_cpu_pct")
    for sc in plan:
        cells = [
            " / ".join(median_of(samples, sc.key, s, a) for a in attrs) if s in sc.servers else NA
            for s in SERVERS
        ]
        client = "curl loops" if sc.client == "curl" else f"wrk -t{sc.threads}"
        title = f"{sc.title} ({client} -c{sc.connections})"
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def rss_table(samples: Sequence[Sample], plan: Sequence[Scenario]) -> list[str]:
    lines = [
        "| VmRSS max (MiB), sampled every 50 ms | " + " | ".join(LABELS[s] for s in SERVERS) + " |",
        "|---|---:|---:|---:|",
    ]
    for sc in plan:
        picked = [s for s in samples if s.scenario == sc.key]
        cells = [f"{max(s.rss_max_mib[name] for s in picked):.1f}" for name in SERVERS]
        lines.append(f"| during {sc.title} | " + " | ".join(cells) + " |")
    return lines


def report(
    samples: Sequence[Sample],
    plan: Sequence[Scenario],
    stats: Stats,
    found: Sequence[Ratio],
    found_checks: Sequence[Check],
    notes: Sequence[str],
) -> str:
    parts = [
        *results_table(plan, stats, found),
        "",
        *cpu_table(samples, plan),
        "",
        *rss_table(samples, plan),
        "",
        "Targets (median run-by-run ratios from this run):",
        *(f"- {c.line()}" for c in found_checks),
        "",
        *(f"- {n}" for n in notes),
    ]
    return "\n".join(parts)


@dataclass(frozen=True)
class RunFacts:
    """What the notes say about the run besides its samples."""

    repeat: int
    duration: int
    nginx_workers: int
    discarded: int
    cpus: int | None
    mirror_hwm_mib: float


def notes_for(facts: RunFacts, samples: Sequence[Sample], stats: Stats) -> list[str]:
    blob_wrk = median_of(samples, "blob-1", NGINX, "client_cpu_pct")
    blob_nginx = median_of(samples, "blob-1", NGINX, "server_cpu_pct")
    nginx_mibs = stats["blob-1"][NGINX].median
    still_noisy = sum(noisy(s) for s in samples)
    return [
        f"median (min-max) of {facts.repeat} runs of {facts.duration}s each, servers interleaved"
        " round by round; ratio columns: median (min-max) of the run-by-run ratios, each run's"
        " servers measured back to back (JSON also has the ratio of the medians).",
        f"nginx: worker_processes {facts.nginx_workers} (the mirror is one Python process),"
        " sendfile on, tcp_nopush on, keep-alive; it serves the same containerd content-store"
        " files on the same URL paths.",
        f"The nginx blob figure ({nginx_mibs:,.0f} MiB/s, 1 client) is the ceiling of this"
        " client on this machine (loopback TCP, wrk reading 8 KiB at a time): a server faster"
        f" than nginx cannot show it here. wrk used {blob_wrk} of its thread, nginx"
        f" {blob_nginx} of a core.",
        "CPU: wrk as % of the cores its threads can use (utime+stime from wait4); server as %"
        " of one core (nginx = master + workers); other = the machine's busy CPU outside wrk,"
        " the servers and ksoftirqd (loopback packets), as % of one core.",
        f"{facts.discarded} run(s) re-measured because other load on the machine took more than"
        f" {OTHER_CPU_WARN_PCT:.0f}% of a core; {still_noisy} of the {len(samples)} kept runs"
        f" still saw such load ({facts.cpus} CPUs on this machine).",
        f"mirror VmHWM (the kernel's peak RSS since start) at the end: {facts.mirror_hwm_mib:.1f}"
        " MiB.",
    ]
