"""What `python -m bench serve` measures: the servers, the scenarios, one run's record.

Pure: names, URL paths, wrk command lines and the `Sample` each run leaves in
the JSON results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.curl import curl_loop_argv, parse_curl_loops
from bench.kit.distribution import MANIFEST_ACCEPT
from bench.kit.images import GeneratedImage
from bench.sampling import PidSource
from bench.wrk import WrkResult, wrk_command

NGINX, DISTRIBUTION, MIRROR = "nginx", "distribution", "mirror"
SERVERS = (NGINX, DISTRIBUTION, MIRROR)
LABELS = {NGINX: "nginx", DISTRIBUTION: "Distribution", MIRROR: "mirror"}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: str  # "blob" | "manifest" | "tag"
    threads: int
    connections: int
    servers: tuple[str, ...] = SERVERS
    client: str = "wrk"  # or "curl": a fresh connection per download, as containerd

    @property
    def unit(self) -> str:
        return "MiB/s" if self.kind == "blob" else "req/s"

    def value(self, result: WrkResult) -> float:
        return result.mib_per_s if self.kind == "blob" else result.requests_per_s


def scenarios(blob_mib: int) -> tuple[Scenario, ...]:
    return (
        Scenario("blob-1", f"blob {blob_mib} MiB, 1 client", "blob", 1, 1),
        Scenario("blob-8", f"blob {blob_mib} MiB, 8 clients", "blob", 2, 8),
        Scenario("blob-1-curl", f"blob {blob_mib} MiB, 1 curl", "blob", 1, 1, client="curl"),
        Scenario("blob-8-curl", f"blob {blob_mib} MiB, 8 curl", "blob", 8, 8, client="curl"),
        Scenario("manifest-32", "manifest by digest, 32 conns", "manifest", 2, 32),
        Scenario("tag-32", "manifest by tag, 32 conns", "tag", 2, 32, (MIRROR,)),
    )


def servers_of(scenario: Scenario) -> tuple[str, ...]:
    return scenario.servers


@dataclass(frozen=True)
class Target:
    """One server under test: where it answers and which pids are it."""

    key: str
    url: str
    query: str
    pids: PidSource

    def path(self, kind: str, image: GeneratedImage) -> str:
        name = image.name
        if kind == "blob":
            return f"/v2/{name}/blobs/{image.layers[0].digest}{self.query}"
        if kind == "manifest":
            return f"/v2/{name}/manifests/{image.digest}{self.query}"
        return f"/v2/{name}/manifests/{image.tag}{self.query}"


def client_argv(scenario: Scenario, url: str, duration: int, script: Path) -> list[str]:
    if scenario.client == "curl":
        return curl_loop_argv(url, scenario.connections, duration)
    return wrk_argv(scenario, url, duration, script)


def curl_result(output: str) -> WrkResult:
    """curl loops' totals in wrk's result shape (no latency percentiles)."""
    total, requests, seconds = parse_curl_loops(output)
    exact = {"bytes": float(total), "duration_us": seconds * 1e6, "requests": float(requests)}
    return WrkResult(
        requests, seconds, float(total), requests / seconds, total / seconds, {}, {}, 0, exact
    )


def wrk_argv(scenario: Scenario, url: str, duration: int, script: Path) -> list[str]:
    # A 256 MiB response takes longer than wrk's default 2 s timeout with 8 clients.
    blob = scenario.kind == "blob"
    return wrk_command(
        url,
        threads=scenario.threads,
        connections=scenario.connections,
        duration=duration,
        timeout_s=60 if blob else 5,
        script=script,
        latency=True,
        headers=() if blob else (f"Accept: {MANIFEST_ACCEPT}",),
    )


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
