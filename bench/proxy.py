"""`python -m bench proxy`: the peer relay, measured against reading the peer directly.

A 2-node local cluster: node 1 holds the images; node 2's mirror relays them.
Side by side in one run, for each relay mode (`copy`, `splice`, `redirect`):
- blob throughput of a large layer through node 2 vs straight from node 1,
  with 1 and 8 concurrent clients: wrk for the relays; for `redirect`, whose
  307 wrk does not follow, `curl -L` loops for both sides (bench/curl.py);
- the time a miss takes to become a 404 when no peer holds the content;
- time to first byte through a peer, with a cold provider cache (each request a
  different layer: a DHT lookup, a peer head, then the body) and a warm one.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.curl import curl_rate
from bench.kit.cluster import LocalCluster
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.mirror import MirrorNode
from bench.measure import MIB, Check, paired_ratios, summarize
from bench.result_file import write_json
from bench.runner import RetryPolicy, Trial, run_trials, trial_matrix
from bench.sampling import PidSource, UsageMeter
from bench.wrk import WRK_DONE_SCRIPT, parse_wrk, run_client, wrk_command

MODES = ("copy", "splice", "redirect")
CLIENTS = (1, 8)
DIRECT, RELAYED = "direct", "relayed"
PAUSE_BETWEEN_RUNS = 0.3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blob-mib", type=int, default=256, help="large layer size (default 256)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument(
        "--misses", type=int, default=300, help="404 requests to time (default 300)"
    )
    parser.add_argument("--small-layers", type=int, default=40, help="layers for TTFB (default 40)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", type=Path, default=Path("bench/results/proxy.json"))


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {"p50": at(0.5), "p99": at(0.99), "max": ordered[-1], "n": len(ordered)}


def _wait_peer(address: str, path: str, timeout: float = 30.0) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("HEAD", path)
            response = conn.getresponse()
            response.read()
            if response.status == 200 and response.getheader("X-Mirror-Peer"):
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise RuntimeError(f"{path} never served through a peer of {address}")


def _ttfb(address: str, path: str) -> float:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.perf_counter()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        first = sock.recv(65536)
        elapsed = time.perf_counter() - started
        if not first.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{path}: {first[:60]!r}")
        while sock.recv(1 << 20):
            pass
    return elapsed


def _time_misses(address: str, ns: str, count: int) -> list[float]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    timings = []
    try:
        for _ in range(count):
            digest = "sha256:" + os.urandom(32).hex()
            started = time.perf_counter()
            conn.request("GET", f"/v2/bench/none/blobs/{digest}?ns={ns}")
            response = conn.getresponse()
            response.read()
            timings.append(time.perf_counter() - started)
            if response.status != 404:
                raise RuntimeError(f"expected 404 for an unknown digest, got {response.status}")
    finally:
        conn.close()
    return timings


def _wrk(url: str, clients: int, duration: int, script: Path) -> float:
    argv = wrk_command(
        url,
        threads=min(clients, 2),
        connections=clients,
        duration=duration,
        timeout_s=60,
        script=script,
    )
    result = parse_wrk(run_client(argv).output)
    if result.errors:
        raise RuntimeError(
            f"wrk saw {result.errors} errors on {url}: socket {result.socket_errors},"
            f" non-2xx/3xx {result.non_2xx_3xx}"
        )
    return result.mib_per_s


def _setup_images(
    cluster: LocalCluster, blob_mib: int, small_layers: int
) -> tuple[GeneratedImage, GeneratedImage]:
    layouts = cluster.base_dir / "layouts"
    big = generate_image(
        layouts / "big", name="bench/big", tag="v1", seed=7, total_size=blob_mib * MIB, layers=1
    )
    small = generate_image(
        layouts / "small",
        name="bench/small",
        tag="v1",
        seed=8,
        total_size=small_layers * 64 * 1024,
        layers=small_layers,
    )
    for image in (big, small):
        push_image(image.layout_dir, image.tag, image.ref(cluster.upstream.host))
        cluster.pull(0, image.ref(cluster.upstream.host), unpack=False)
    return big, small


def _set_relay_mode(cluster: LocalCluster, mode: str) -> None:
    mirror = cluster[1].mirror
    mirror.stop()
    argv = [a for a in mirror.process.argv if not a.startswith("--mirror-relay")]
    mirror.process.argv = [*argv, f"--mirror-relay={mode}"]
    mirror.start()


@dataclass(frozen=True)
class Scenario:
    """The relay mode node 2 runs with, and how many clients read at once."""

    mode: str
    clients: int


@dataclass(frozen=True)
class ThroughputRun:
    mib_per_s: float
    relay_rss_mib: float | None = None  # sampled on relayed runs only
    # The relay process's CPU seconds (all its threads) per GiB it relayed.
    relay_cpu_s_per_gib: float | None = None


@dataclass(frozen=True)
class Throughput:
    """Straight from the holder (node 1) and relayed by node 2, one wrk run each."""

    holder: MirrorNode
    relay: MirrorNode
    path: str
    duration: int
    script: Path

    def __call__(self, trial: Trial[Scenario, str]) -> ThroughputRun:
        if trial.subject == DIRECT:
            return ThroughputRun(self._rate(trial.scenario, self.holder.url + self.path))
        # The relay may have been restarted (another mode): ask for its pid at every sample.
        relay = self.relay
        groups: dict[str, PidSource] = {"relay": lambda: [relay.process.pid or 0]}
        with UsageMeter(groups) as meter:
            started = time.monotonic()
            mib_per_s = self._rate(trial.scenario, relay.url + self.path)
            elapsed = time.monotonic() - started
        usage = meter.usage
        gib = mib_per_s * elapsed / 1024
        cpu_per_gib = usage.group_cpu_s["relay"] / gib if gib > 0 else None
        return ThroughputRun(mib_per_s, usage.rss_max_mib("relay"), cpu_per_gib)

    def _rate(self, scenario: Scenario, url: str) -> float:
        if scenario.mode == "redirect":
            return curl_rate(url, scenario.clients, self.duration)
        return _wrk(url, scenario.clients, self.duration, self.script)


def _subjects(scenario: Scenario) -> tuple[str, ...]:
    return (DIRECT, RELAYED)


def _throughput_row(
    trial_results: list[tuple[Trial[Scenario, str], ThroughputRun]],
) -> dict[str, Any]:
    direct = [r.mib_per_s for t, r in trial_results if t.subject == DIRECT]
    relayed = [r.mib_per_s for t, r in trial_results if t.subject == RELAYED]
    rss = [r.relay_rss_mib for t, r in trial_results if r.relay_rss_mib is not None]
    cpu = [r.relay_cpu_s_per_gib for t, r in trial_results if r.relay_cpu_s_per_gib is not None]
    return {
        "direct_mib_s": direct,
        "relayed_mib_s": relayed,
        "ratios": paired_ratios(relayed, direct),
        "relay_rss_mib": rss,
        "relay_cpu_s_per_gib": cpu,
    }


def measure_throughput(
    cluster: LocalCluster, big: GeneratedImage, args: argparse.Namespace, script: Path
) -> tuple[dict[str, Any], list[Check]]:
    """Every mode and client count: `repeat` rounds of direct, then relayed."""
    ns = cluster.upstream.host
    holder, relay = cluster[0].mirror, cluster[1].mirror
    layer = big.layers[0]
    path = f"/v2/{big.name}/blobs/{layer.digest}?ns={ns}"
    _wait_peer(relay.address, path)
    _step(f"node-1 holds a {layer.size / MIB:.0f} MiB layer; node-2 relays it")
    measure = Throughput(holder, relay, path, args.duration, script)
    rows: dict[str, Any] = {}
    checks: list[Check] = []
    for mode in args.modes:
        _set_relay_mode(cluster, mode)
        _wait_peer(relay.address, path)
        for clients in CLIENTS:
            scenario = Scenario(mode, clients)
            outcome = run_trials(
                trial_matrix([scenario], _subjects, args.repeat),
                measure,
                retry=RetryPolicy(pause_s=PAUSE_BETWEEN_RUNS),
            )
            row = _throughput_row(outcome.kept)
            rows[f"{mode}/{clients}"] = row
            ratio = summarize(row["ratios"])
            direct, relayed = summarize(row["direct_mib_s"]), summarize(row["relayed_mib_s"])
            print(
                f"    {mode:6} {clients} client(s): direct {direct.format()} MiB/s,"
                f" relayed {relayed.format()} MiB/s, ratio {ratio.format(2)}"
            )
            target = 0.97 if mode == "redirect" else 0.9
            checks.append(
                Check(f"relay ({mode}, {clients} clients) vs direct", ratio.median, ">=", target)
            )
    return rows, checks


def _in_ms(percentiles: dict[str, float]) -> dict[str, float]:
    return {k: v * 1000 if k != "n" else v for k, v in percentiles.items()}


def measure_latency(
    cluster: LocalCluster, small: GeneratedImage, misses: int
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """404 after a miss, and time to first byte: via a peer (cold, then warm) and direct."""
    ns = cluster.upstream.host
    holder, relay = cluster[0].mirror, cluster[1].mirror
    _step(f"timing {misses} misses (no peer holds the digest)")
    miss_ms = _in_ms(_percentiles(_time_misses(relay.address, ns, misses)))
    _step(f"time to first byte through a peer over {len(small.layers)} layers")
    paths = [f"/v2/{small.name}/blobs/{b.digest}?ns={ns}" for b in small.layers]
    cold = [_ttfb(relay.address, p) for p in paths]
    warm = [_ttfb(relay.address, p) for p in paths]
    direct_ttfb = [_ttfb(holder.address, p) for p in paths]
    ttfb_ms = {
        name: _in_ms(_percentiles(values))
        for name, values in (("cold", cold), ("warm", warm), ("direct", direct_ttfb))
    }
    return miss_ms, ttfb_ms


def _measure(base: Path, args: argparse.Namespace, results: dict[str, Any]) -> list[Check]:
    """Throughput, then latency, on a fresh 2-node cluster; fills `results`."""
    script = base / "done.lua"
    script.write_text(WRK_DONE_SCRIPT)
    _step(f"starting a 2-node cluster in {base}")
    # No peer stream cap (--peer-streams): 8 clients of one holder would otherwise be
    # told busy and wait, which measures the cap, not the relay.
    with LocalCluster(
        2, base / "cluster", log_level="WARN", mirror_args=["--peer-streams=0"]
    ) as cluster:
        big, small = _setup_images(cluster, args.blob_mib, args.small_layers)
        results["throughput"], checks = measure_throughput(cluster, big, args, script)
        results["miss_404_ms"], results["ttfb_ms"] = measure_latency(cluster, small, args.misses)
        checks.append(Check("404 after a miss, p99", results["miss_404_ms"]["p99"], "<", 30, " ms"))
    return checks


def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    results: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "settings": vars(args) | {"out": str(args.out)},
        "throughput": {},
    }
    try:
        checks = _measure(base, args, results)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results["checks"] = [c.as_dict() for c in checks]
    _print_table(results)
    for check in checks:
        print(check.line())
    write_json(args.out, results)
    print(f"results written to {args.out}")
    return 0


def _cpu_cell(row: dict[str, Any]) -> str:
    samples = row.get("relay_cpu_s_per_gib") or []
    return summarize(samples).format(2) if samples else "n/a"


def _print_table(results: dict[str, Any]) -> None:
    print()
    print(
        "| relay | clients | direct MiB/s | relayed MiB/s | ratio | relay RSS MiB"
        " | relay CPU s/GiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for key, row in results["throughput"].items():
        mode, clients = key.split("/")
        print(
            f"| {mode} | {clients} | {summarize(row['direct_mib_s']).format()} |"
            f" {summarize(row['relayed_mib_s']).format()} | {summarize(row['ratios']).format(2)} |"
            f" {max(row['relay_rss_mib']):.0f} | {_cpu_cell(row)} |"
        )
    miss = results["miss_404_ms"]
    print()
    print("| latency (ms) | p50 | p99 | max |")
    print("|---|---|---|---|")
    print(f"| miss -> 404 | {miss['p50']:.1f} | {miss['p99']:.1f} | {miss['max']:.1f} |")
    for name, row in results["ttfb_ms"].items():
        label = {
            "cold": "first byte via peer, cold lookup",
            "warm": "first byte via peer, cached",
            "direct": "first byte from the holder",
        }[name]
        print(f"| {label} | {row['p50']:.1f} | {row['p99']:.1f} | {row['max']:.1f} |")
    print()
