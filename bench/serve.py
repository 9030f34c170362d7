"""`python -m bench serve`: the hot path against nginx and the Distribution registry.

One run, one machine, the same content: a generated image is pushed to a
Distribution registry and fetched into a containerd; nginx serves that
containerd's content store (sendfile, tcp_nopush, keep-alive) and `mirror
registry` serves it through the `/v2/` API. `wrk` measures blob throughput with
1 and 8 clients and manifest requests/s with 32 keep-alive connections; each
server's VmRSS is sampled every 50 ms. Every measurement is repeated, servers
interleaved, and reported as median (min-max); targets are ratios within the run.

This module runs it: the servers are in `bench.serve_servers`, what is measured
in `bench.serve_plan`, the report in `bench.serve_report`, the rounds in
`bench.runner`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import machine_info
from bench.measure import Check
from bench.procstat import pids_named, status_kib
from bench.result_file import write_json
from bench.runner import RetryPolicy, RunHooks, Trial, run_trials, trial_matrix
from bench.sampling import PidSource, UsageMeter
from bench.serve_plan import (
    Sample,
    Scenario,
    Target,
    client_argv,
    curl_result,
    scenarios,
    servers_of,
)
from bench.serve_report import (
    RunFacts,
    checks,
    noisy,
    notes_for,
    progress_line,
    ratios,
    report,
    rss_summary,
    summaries,
)
from bench.serve_servers import Setup, servers, step, verify_all
from bench.wrk import WRK_DONE_SCRIPT, parse_wrk, run_client

PAUSE_BETWEEN_RUNS = 0.3

ServeTrial = Trial[Scenario, str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blob-mib", type=int, default=256, help="layer size in MiB (256)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (3)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per run (3)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded seconds first (1)")
    parser.add_argument(
        "--nginx-workers",
        type=int,
        default=1,
        help="nginx worker_processes (1: the mirror is one Python process)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/serve.json"), help="JSON results file"
    )
    parser.add_argument("--dir", type=Path, default=None, help="working directory (temp)")
    parser.add_argument("--keep-dir", action="store_true", help="keep the working directory")
    parser.add_argument(
        "--retries",
        type=int,
        default=6,
        help="runs that may be measured again, in all, when other load competed with them (6)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


@dataclass(frozen=True)
class Measurer:
    """One wrk run against one server, with every server's CPU and VmRSS around it."""

    targets: dict[str, Target]
    setup: Setup
    duration: int
    script: Path
    softirq_pids: Sequence[int]

    def __call__(self, trial: ServeTrial) -> Sample:
        scenario, target = trial.scenario, self.targets[trial.subject]
        url = target.url + target.path(scenario.kind, self.setup.image)
        argv = client_argv(scenario, url, self.duration, self.script)
        groups: dict[str, PidSource] = {key: t.pids for key, t in self.targets.items()}
        with UsageMeter(groups, softirq_pids=self.softirq_pids) as meter:
            client = run_client(argv)
        usage = meter.usage
        ours = client.cpu_s + sum(usage.group_cpu_s.values()) + usage.softirq_cpu_s
        result = (
            curl_result(client.output) if scenario.client == "curl" else parse_wrk(client.output)
        )
        wall = client.wall_s
        return Sample(
            scenario=scenario.key,
            server=target.key,
            repeat=trial.round,
            value=scenario.value(result),
            unit=scenario.unit,
            argv=argv,
            wrk=asdict(result),
            client_cpu_s=client.cpu_s,
            client_wall_s=wall,
            client_cpu_pct=100 * client.cpu_s / wall / scenario.threads,
            server_cpu_pct=100 * usage.group_cpu_s[target.key] / wall,
            softirq_cpu_pct=100 * usage.softirq_cpu_s / wall,
            other_cpu_pct=100 * max(0.0, usage.machine_busy_s - ours) / wall,
            rss_max_mib={name: usage.rss_max_mib(name) for name in groups},
            rss_samples_kib=usage.rss_samples_kib,
            output=client.output,
        )


class Progress(RunHooks[Scenario, str, Sample]):
    """The console lines as the rounds go."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def round_started(self, round_: int) -> None:
        step(f"round {round_ + 1}/{self.rounds}")

    def measured(self, trial: ServeTrial, result: Sample) -> None:
        print(progress_line(result, self.rounds), flush=True)

    def discarded(self, trial: ServeTrial, result: Sample) -> None:
        print("        discarded (other load on the machine); measuring again")


def warm_up(
    targets: dict[str, Target],
    setup: Setup,
    plan: Sequence[Scenario],
    seconds: int,
    script: Path,
) -> None:
    step(f"warm-up: {seconds}s per server and measurement, not recorded")
    for trial in trial_matrix(plan, servers_of, 1):
        target = targets[trial.subject]
        url = target.url + target.path(trial.scenario.kind, setup.image)
        run_client(client_argv(trial.scenario, url, seconds, script))


def measure_all(
    setup: Setup, plan: Sequence[Scenario], args: argparse.Namespace, script: Path
) -> tuple[list[Sample], list[Sample]]:
    """Every run, servers interleaved; and the runs discarded because of other load."""
    targets = setup.targets()
    if args.warmup > 0:
        warm_up(targets, setup, plan, args.warmup, script)
    # Once per run: scanning /proc for kernel threads costs CPU the servers need.
    measure = Measurer(targets, setup, args.duration, script, pids_named("ksoftirqd/"))
    outcome = run_trials(
        trial_matrix(plan, servers_of, args.repeat),
        measure,
        retry=RetryPolicy(budget=args.retries, pause_s=PAUSE_BETWEEN_RUNS),
        rejects=noisy,
        hooks=Progress(args.repeat),
    )
    return outcome.results(), outcome.discarded_results()


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so every server is stopped and the directory removed.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    for tool in ("wrk", "nginx", "docker-registry", "containerd", "skopeo"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: run `make deps`", file=sys.stderr)
            return 2
    plan = scenarios(args.blob_mib)
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    base.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    step(f"working directory {base}")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        script = base / "wrk-done.lua"
        script.write_text(WRK_DONE_SCRIPT)
        with servers(base, args.blob_mib, args.nginx_workers) as setup:
            verify_all(setup, plan)
            samples, discarded = measure_all(setup, plan, args, script)
            mirror_hwm = status_kib(setup.mirror.process.pid or 0, "VmHWM") / 1024
            payload, text, found_checks = summarize_run(
                args, plan, samples, discarded, setup, mirror_hwm, started
            )
    except KeyboardInterrupt:
        step("interrupted: every process stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not args.keep_dir:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(text)
    write_json(args.out, payload)
    step(f"raw samples, medians and ratios written to {args.out}")
    failed = [c for c in found_checks if not c.passed]
    return 1 if args.strict and failed else 0


def summarize_run(
    args: argparse.Namespace,
    plan: Sequence[Scenario],
    samples: Sequence[Sample],
    discarded: Sequence[Sample],
    setup: Setup,
    mirror_hwm: float,
    started: datetime,
) -> tuple[dict[str, Any], str, list[Check]]:
    stats = summaries(samples, plan)
    found = ratios(samples, stats)
    rss = rss_summary(samples)
    found_checks = checks(found, rss)
    facts = RunFacts(
        repeat=args.repeat,
        duration=args.duration,
        nginx_workers=args.nginx_workers,
        discarded=len(discarded),
        cpus=os.cpu_count(),
        mirror_hwm_mib=mirror_hwm,
    )
    text = report(samples, plan, stats, found, found_checks, notes_for(facts, samples, stats))
    image = setup.image
    payload = {
        "benchmark": "serve",
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(),
        "content": {
            "image": image.ref(setup.upstream.host),
            "blob": asdict(image.layers[0]),
            "manifest": asdict(image.top),
        },
        "commands": setup.commands(),
        "samples": [asdict(s) for s in samples],
        "discarded_samples": [asdict(s) for s in discarded],
        "summary": {sc: {k: asdict(v) for k, v in per.items()} for sc, per in stats.items()},
        "rss_max_mib": rss,
        "mirror_vmhwm_mib": mirror_hwm,
        "ratios": [asdict(r) for r in found],
        "checks": [c.as_dict() for c in found_checks],
        "table": text,
    }
    return payload, text, found_checks
