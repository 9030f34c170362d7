"""`python -m bench serve`: the hot path against nginx and the Distribution registry.

One run, one machine, the same content: a generated image is pushed to a
Distribution registry and fetched into a containerd; nginx serves that
containerd's content store (sendfile, tcp_nopush, keep-alive) and `mirror
registry` serves it through the `/v2/` API. `wrk` measures blob throughput with
1 and 8 clients and manifest requests/s with 32 keep-alive connections; each
server's VmRSS is sampled every 50 ms. Every measurement is repeated, servers
interleaved, and reported as median (min-max); targets are ratios within the run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.kit.containerd import ContainerdNode
from bench.kit.distribution import MANIFEST_ACCEPT
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.mirror import MirrorNode
from bench.kit.nginx import AliasLocation, NginxServer
from bench.kit.procs import run as run_command
from bench.kit.registry import UpstreamRegistry
from bench.measure import (
    MIB,
    WRK_DONE_SCRIPT,
    Check,
    RssSampler,
    Summary,
    WrkResult,
    children,
    group_cpu_seconds,
    paired_ratios,
    parse_wrk,
    pids_named,
    status_kib,
    summarize,
    system_task_seconds,
)

HOST = "127.0.0.1"
NGINX, DISTRIBUTION, MIRROR = "nginx", "distribution", "mirror"
LABELS = {NGINX: "nginx", DISTRIBUTION: "Distribution", MIRROR: "mirror"}
RSS_TARGET_MIB = 100.0
PAUSE_BETWEEN_RUNS = 0.3
NA = "n/a"
SOFTIRQ_PIDS = pids_named("ksoftirqd/")
# Above this, something else on the machine competed with the run for CPU.
OTHER_CPU_WARN_PCT = 25.0


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


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


# What is measured.


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: str  # "blob" | "manifest" | "tag"
    threads: int
    connections: int
    servers: tuple[str, ...] = (NGINX, DISTRIBUTION, MIRROR)

    @property
    def unit(self) -> str:
        return "MiB/s" if self.kind == "blob" else "req/s"

    def value(self, result: WrkResult) -> float:
        return result.mib_per_s if self.kind == "blob" else result.requests_per_s


def scenarios(blob_mib: int) -> tuple[Scenario, ...]:
    return (
        Scenario("blob-1", f"blob {blob_mib} MiB, 1 client", "blob", 1, 1),
        Scenario("blob-8", f"blob {blob_mib} MiB, 8 clients", "blob", 2, 8),
        Scenario("manifest-32", "manifest by digest, 32 conns", "manifest", 2, 32),
        Scenario("tag-32", "manifest by tag, 32 conns", "tag", 2, 32, (MIRROR,)),
    )


@dataclass(frozen=True)
class Target:
    """One server under test: where it answers and which pids are it."""

    key: str
    url: str
    query: str
    pids: Callable[[], list[int]]

    def path(self, kind: str, image: GeneratedImage) -> str:
        name = image.name
        if kind == "blob":
            return f"/v2/{name}/blobs/{image.layers[0].digest}{self.query}"
        if kind == "manifest":
            return f"/v2/{name}/manifests/{image.digest}{self.query}"
        return f"/v2/{name}/manifests/{image.tag}{self.query}"


@dataclass
class Sample:
    scenario: str
    server: str
    repeat: int
    value: float
    unit: str
    argv: list[str]
    wrk: dict[str, Any]
    client_cpu_s: float
    client_wall_s: float
    client_cpu_pct: float  # of the cores its threads could use
    server_cpu_pct: float  # of one core
    # Loopback packets processed in ksoftirqd rather than in wrk's or the server's context.
    softirq_cpu_pct: float
    # Busy CPU on the machine outside wrk, the servers and ksoftirqd: other jobs.
    other_cpu_pct: float
    rss_max_mib: dict[str, float]
    rss_samples_kib: dict[str, list[int]] = field(repr=False)
    output: str = field(repr=False)


# Running wrk.


def wrk_argv(scenario: Scenario, url: str, duration: int, script: Path) -> list[str]:
    # A 256 MiB response takes longer than wrk's default 2 s timeout with 8 clients.
    timeout = 60 if scenario.kind == "blob" else 5
    argv = ["wrk", f"-t{scenario.threads}", f"-c{scenario.connections}", f"-d{duration}s"]
    argv += ["--timeout", f"{timeout}s", "--latency", "-s", str(script)]
    if scenario.kind != "blob":
        argv += ["-H", f"Accept: {MANIFEST_ACCEPT}"]
    return [*argv, url]


@dataclass(frozen=True)
class ClientRun:
    output: str
    cpu_s: float
    wall_s: float


def run_client(argv: Sequence[str]) -> ClientRun:
    """Run wrk to completion; its own rusage (all threads) comes from wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert proc.stdout is not None
        output = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{output}")
    return ClientRun(output, usage.ru_utime + usage.ru_stime, wall)


def measure(
    scenario: Scenario,
    target: Target,
    image: GeneratedImage,
    *,
    duration: int,
    repeat: int,
    script: Path,
    rss_groups: dict[str, Callable[[], list[int]]],
) -> Sample:
    argv = wrk_argv(scenario, target.url + target.path(scenario.kind, image), duration, script)
    cpu_before = {name: group_cpu_seconds(pids()) for name, pids in rss_groups.items()}
    busy_before = system_task_seconds()
    softirq_before = group_cpu_seconds(SOFTIRQ_PIDS)
    with RssSampler(rss_groups) as sampler:
        client = run_client(argv)
    busy = system_task_seconds() - busy_before
    cpu = {name: group_cpu_seconds(pids()) - cpu_before[name] for name, pids in rss_groups.items()}
    softirq = group_cpu_seconds(SOFTIRQ_PIDS) - softirq_before
    ours = client.cpu_s + sum(cpu.values()) + softirq
    result = parse_wrk(client.output)
    return Sample(
        scenario=scenario.key,
        server=target.key,
        repeat=repeat,
        value=scenario.value(result),
        unit=scenario.unit,
        argv=argv,
        wrk=asdict(result),
        client_cpu_s=client.cpu_s,
        client_wall_s=client.wall_s,
        client_cpu_pct=100 * client.cpu_s / client.wall_s / scenario.threads,
        server_cpu_pct=100 * cpu[target.key] / client.wall_s,
        softirq_cpu_pct=100 * softirq / client.wall_s,
        other_cpu_pct=100 * max(0.0, busy - ours) / client.wall_s,
        rss_max_mib={name: sampler.max_mib(name) for name in rss_groups},
        rss_samples_kib=sampler.samples,
        output=client.output,
    )


def progress_line(sample: Sample, total_repeats: int) -> str:
    errors = sample.wrk["non_2xx_3xx"] + sum(sample.wrk["socket_errors"].values())
    warn = f"  !! {errors} errors" if errors else ""
    if sample.other_cpu_pct > OTHER_CPU_WARN_PCT:
        warn += f"  !! other load {sample.other_cpu_pct:.0f}% of a core"
    return (
        f"    [{sample.repeat + 1}/{total_repeats}] {sample.scenario:<12} "
        f"{LABELS[sample.server]:<13}{sample.value:>11,.0f} {sample.unit:<6}"
        f"  wrk cpu {sample.client_cpu_pct:3.0f}%  server cpu {sample.server_cpu_pct:3.0f}%"
        f"  rss {sample.rss_max_mib[sample.server]:6.1f} MiB{warn}"
    )


# Setting up the servers.


@dataclass
class Setup:
    image: GeneratedImage
    upstream: UpstreamRegistry
    node: ContainerdNode
    nginx: NginxServer
    mirror: MirrorNode

    def targets(self) -> dict[str, Target]:
        ns = f"?ns={self.upstream.host}"
        # Scanning /proc for nginx's workers every 50 ms would cost CPU the servers need.
        nginx_pids = _with_children(self.nginx.pid)
        return {
            NGINX: Target(NGINX, self.nginx.url, "", lambda: nginx_pids),
            DISTRIBUTION: Target(DISTRIBUTION, self.upstream.url, "", lambda: _pid(self.upstream)),
            MIRROR: Target(MIRROR, self.mirror.url, ns, lambda: _pid(self.mirror.process)),
        }


def _pid(proc: Any) -> list[int]:
    return [proc.pid] if proc.pid is not None else []


def _with_children(pid: int | None) -> list[int]:
    return [] if pid is None else [pid, *children(pid)]


def nginx_locations(blob_dir: Path) -> list[AliasLocation]:
    """The mirror's URL paths, mapped onto the content store's files."""
    digest = "sha256:([0-9a-f]{64})$"
    return [
        AliasLocation(f"^/v2/.+/blobs/{digest}", f"{blob_dir}/$1"),
        AliasLocation(
            f"^/v2/.+/manifests/{digest}",
            f"{blob_dir}/$1",
            "application/vnd.oci.image.manifest.v1+json",
        ),
    ]


@contextlib.contextmanager
def servers(base: Path, blob_mib: int, nginx_workers: int) -> Iterator[Setup]:
    with contextlib.ExitStack() as stack:
        _step("starting the Distribution registry and containerd")
        upstream = stack.enter_context(UpstreamRegistry(base / "upstream", log_level="error"))
        node = stack.enter_context(ContainerdNode("node", base))
        _step(f"generating a {blob_mib} MiB single-layer image")
        image = generate_image(
            base / "layout",
            name="bench/serve",
            tag="v1",
            seed=7,
            total_size=blob_mib * MIB,
            layers=1,
        )
        ref = image.ref(upstream.host)
        push_image(image.layout_dir, image.tag, ref)
        _step(f"pushed {ref}; fetching it into containerd")
        write_hosts_toml(node.config_path, upstream.host, upstream.url)
        node.pull(ref, unpack=False)
        blob_dir = node.content_path / "blobs" / "sha256"
        nginx = NginxServer(
            base / "nginx", workers=nginx_workers, locations=nginx_locations(blob_dir)
        )
        stack.enter_context(nginx)
        _step(f"nginx ({nginx_workers} worker(s)) at {nginx.url} serving {blob_dir}")
        mirror = MirrorNode(
            host=HOST,
            containerd_sock=node.address,
            workdir=base / "mirror",
            log_level="WARN",
        )
        stack.enter_context(mirror)
        _step(f"mirror registry at {mirror.url} (pid {mirror.process.pid})")
        yield Setup(image, upstream, node, nginx, mirror)


def verify(target: Target, path: str, expected: str, accept: str | None) -> None:
    """GET once: status 200 and a body hashing to `expected`; warms every cache too."""
    host, port = target.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        sha = hashlib.sha256()
        while chunk := response.read(1 << 20):
            sha.update(chunk)
    finally:
        conn.close()
    got = f"sha256:{sha.hexdigest()}"
    if response.status != 200 or got != expected:
        raise RuntimeError(f"{target.key} GET {path} -> {response.status}, body {got}")


def verify_all(setup: Setup, plan: Sequence[Scenario]) -> None:
    targets = setup.targets()
    image = setup.image
    expected = {"blob": image.layers[0].digest, "manifest": image.digest, "tag": image.digest}
    for kind in ("blob", "manifest", "tag"):
        for key in sorted({s for sc in plan if sc.kind == kind for s in sc.servers}):
            accept = None if kind == "blob" else MANIFEST_ACCEPT
            verify(targets[key], targets[key].path(kind, image), expected[kind], accept)
    _step("every server answers 200 with the right digest for every URL")


# Summaries, ratios, targets.


def values(samples: Sequence[Sample], scenario: str, server: str) -> list[float]:
    ordered = sorted(
        (s for s in samples if s.scenario == scenario and s.server == server),
        key=lambda s: s.repeat,
    )
    return [s.value for s in ordered]


def summaries(samples: Sequence[Sample], plan: Sequence[Scenario]) -> dict[str, dict[str, Summary]]:
    return {
        sc.key: {server: summarize(values(samples, sc.key, server)) for server in sc.servers}
        for sc in plan
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


def ratio(
    samples: Sequence[Sample], stats: dict[str, dict[str, Summary]], scenario: str, a: str, b: str
) -> Ratio:
    paired = paired_ratios(values(samples, scenario, a), values(samples, scenario, b))
    median_b = stats[scenario][b].median
    of_medians = stats[scenario][a].median / median_b if median_b else float("inf")
    return Ratio(scenario, a, b, of_medians, summarize(paired or [of_medians]))


def ratios(samples: Sequence[Sample], stats: dict[str, dict[str, Summary]]) -> list[Ratio]:
    return [
        ratio(samples, stats, sc, MIRROR, other)
        for sc in ("blob-1", "blob-8", "manifest-32")
        for other in (NGINX, DISTRIBUTION)
        if sc in stats
    ]


def checks(found: Sequence[Ratio], rss: dict[str, float]) -> list[Check]:
    by_key = {(r.scenario, r.denominator): r.paired.median for r in found}
    wanted = [
        ("blob-1", NGINX, 1.0, "blob throughput, 1 client, mirror / nginx"),
        ("blob-8", NGINX, 1.0, "blob throughput, 8 clients, mirror / nginx"),
        ("manifest-32", NGINX, 0.6, "manifest requests/s, mirror / nginx"),
        ("manifest-32", DISTRIBUTION, 10.0, "manifest requests/s, mirror / Distribution"),
    ]
    out = [
        Check(name, by_key[(sc, den)], ">=", threshold)
        for sc, den, threshold, name in wanted
        if (sc, den) in by_key
    ]
    out.append(Check("mirror VmRSS max", rss.get(MIRROR, 0.0), "<", RSS_TARGET_MIB, " MiB"))
    return out


# The report.


def _median_cell(stats: dict[str, Summary], server: str) -> str:
    return stats[server].format() if server in stats else NA


def _ratio_cell(found: Sequence[Ratio], scenario: str, den: str) -> str:
    for r in found:
        if r.scenario == scenario and r.denominator == den:
            return r.paired.format(2).replace(" (", "x (")
    return NA


def results_table(
    plan: Sequence[Scenario], stats: dict[str, dict[str, Summary]], found: Sequence[Ratio]
) -> list[str]:
    lines = [
        "| measurement | nginx | Distribution | mirror | mirror / nginx | mirror / Distribution |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for sc in plan:
        row = [f"{sc.title} ({sc.unit})"]
        row += [_median_cell(stats[sc.key], s) for s in (NGINX, DISTRIBUTION, MIRROR)]
        row += [_ratio_cell(found, sc.key, den) for den in (NGINX, DISTRIBUTION)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _median_of(samples: Sequence[Sample], scenario: str, server: str, attr: str) -> str:
    picked = [getattr(s, attr) for s in samples if s.scenario == scenario and s.server == server]
    return f"{summarize(picked).median:.0f}%" if picked else NA


def cpu_table(samples: Sequence[Sample], plan: Sequence[Scenario]) -> list[str]:
    servers_ = (NGINX, DISTRIBUTION, MIRROR)
    head = " | ".join(f"{LABELS[s]}: wrk / server / other" for s in servers_)
    lines = [f"| CPU, median | {head} |", "|---|---:|---:|---:|"]
    attrs = ("client_cpu_pct", "server_cpu_pct", "other_cpu_pct")
    for sc in plan:
        cells = [
            " / ".join(_median_of(samples, sc.key, s, a) for a in attrs) if s in sc.servers else NA
            for s in servers_
        ]
        title = f"{sc.title} (wrk -t{sc.threads} -c{sc.connections})"
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def rss_table(samples: Sequence[Sample], plan: Sequence[Scenario]) -> list[str]:
    servers_ = (NGINX, DISTRIBUTION, MIRROR)
    lines = [
        "| VmRSS max (MiB), sampled every 50 ms | "
        + " | ".join(LABELS[s] for s in servers_)
        + " |",
        "|---|---:|---:|---:|",
    ]
    for sc in plan:
        picked = [s for s in samples if s.scenario == sc.key]
        cells = [f"{max(s.rss_max_mib[name] for s in picked):.1f}" for name in servers_]
        lines.append(f"| during {sc.title} | " + " | ".join(cells) + " |")
    return lines


def report(
    samples: Sequence[Sample],
    plan: Sequence[Scenario],
    stats: dict[str, dict[str, Summary]],
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


def notes_for(
    args: argparse.Namespace,
    samples: Sequence[Sample],
    discarded: int,
    stats: dict[str, dict[str, Summary]],
    mirror_hwm_mib: float,
) -> list[str]:
    blob_wrk = _median_of(samples, "blob-1", NGINX, "client_cpu_pct")
    blob_nginx = _median_of(samples, "blob-1", NGINX, "server_cpu_pct")
    nginx_mibs = stats["blob-1"][NGINX].median
    noisy = sum(s.other_cpu_pct > OTHER_CPU_WARN_PCT for s in samples)
    return [
        f"median (min-max) of {args.repeat} runs of {args.duration}s each, servers interleaved"
        " round by round; ratio columns: median (min-max) of the run-by-run ratios, each run's"
        " servers measured back to back (JSON also has the ratio of the medians).",
        f"nginx: worker_processes {args.nginx_workers} (the mirror is one Python process),"
        " sendfile on, tcp_nopush on, keep-alive; it serves the same containerd content-store"
        " files on the same URL paths.",
        f"The nginx blob figure ({nginx_mibs:,.0f} MiB/s, 1 client) is the ceiling of this"
        " client on this machine (loopback TCP, wrk reading 8 KiB at a time): a server faster"
        f" than nginx cannot show it here. wrk used {blob_wrk} of its thread, nginx"
        f" {blob_nginx} of a core.",
        "CPU: wrk as % of the cores its threads can use (utime+stime from wait4); server as %"
        " of one core (nginx = master + workers); other = the machine's busy CPU outside wrk,"
        " the servers and ksoftirqd (loopback packets), as % of one core.",
        f"{discarded} run(s) re-measured because other load on the machine took more than"
        f" {OTHER_CPU_WARN_PCT:.0f}% of a core; {noisy} of the {len(samples)} kept runs still"
        f" saw such load ({os.cpu_count()} CPUs on this machine).",
        f"mirror VmHWM (the kernel's peak RSS since start) at the end: {mirror_hwm_mib:.1f} MiB.",
    ]


# Machine and run metadata.


def _first_line(argv: Sequence[str]) -> str:
    try:
        result = run_command(argv, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else ""


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "mem_total_kib": status_meminfo(),
        "python": sys.version.split()[0],
        "versions": {
            "nginx": _first_line(["nginx", "-v"]),
            "wrk": _first_line(["wrk", "-v"]),
            "docker-registry": _first_line(["docker-registry", "--version"]),
            "containerd": _first_line(["containerd", "--version"]),
            "trio": _package_version("trio"),
            "httptools": _package_version("httptools"),
            "trio-mirror": _package_version("trio-mirror"),
        },
    }


def status_meminfo() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


# The run.


def measure_all(
    setup: Setup, plan: Sequence[Scenario], args: argparse.Namespace, script: Path
) -> tuple[list[Sample], list[Sample]]:
    """Every run, servers interleaved; and the runs discarded because of other load."""
    targets = setup.targets()
    rss_groups = {key: t.pids for key, t in targets.items()}
    if args.warmup > 0:
        _step(f"warm-up: {args.warmup}s per server and measurement, not recorded")
        for sc in plan:
            for key in sc.servers:
                url = targets[key].url + targets[key].path(sc.kind, setup.image)
                run_client(wrk_argv(sc, url, args.warmup, script))
    samples: list[Sample] = []
    discarded: list[Sample] = []
    budget = args.retries
    for repeat in range(args.repeat):
        _step(f"round {repeat + 1}/{args.repeat}")
        for sc in plan:
            for key in sc.servers:
                for attempt in range(budget + 1):
                    time.sleep(PAUSE_BETWEEN_RUNS * (1 + 3 * attempt))
                    sample = measure(
                        sc,
                        targets[key],
                        setup.image,
                        duration=args.duration,
                        repeat=repeat,
                        script=script,
                        rss_groups=rss_groups,
                    )
                    print(progress_line(sample, args.repeat), flush=True)
                    if sample.other_cpu_pct <= OTHER_CPU_WARN_PCT or budget == 0:
                        break
                    budget -= 1
                    discarded.append(sample)
                    print("        discarded (other load on the machine); measuring again")
                samples.append(sample)
    return samples, discarded


def commands(setup: Setup) -> dict[str, Any]:
    return {
        "nginx": setup.nginx.argv,
        "nginx_config": setup.nginx.config_text(),
        "distribution": setup.upstream.process.argv,
        "distribution_config": setup.upstream.config_file.read_text(),
        "mirror": setup.mirror.process.argv,
        "containerd": setup.node.process.argv,
        "wrk_script": WRK_DONE_SCRIPT,
    }


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
    _step(f"working directory {base}")
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
        _step("interrupted: every process stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not args.keep_dir:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(text)
    write_json(args.out, payload)
    _step(f"raw samples, medians and ratios written to {args.out}")
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
    text = report(
        samples,
        plan,
        stats,
        found,
        found_checks,
        notes_for(args, samples, len(discarded), stats, mirror_hwm),
    )
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
        "commands": commands(setup),
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
