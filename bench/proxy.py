"""`python -m bench proxy`: the peer relay, measured against reading the peer directly.

A 2-node local cluster: node 1 holds the images; node 2's mirror relays them.
Side by side in one run, for each relay mode (`copy`, `splice`):
- blob throughput of a large layer through node 2 vs straight from node 1,
  with 1 and 8 concurrent clients (wrk);
- the time a miss takes to become a 404 when no peer holds the content;
- time to first byte through a peer, with a cold provider cache (each request a
  different layer: a DHT lookup, a peer head, then the body) and a warm one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.kit.cluster import LocalCluster
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.measure import (
    MIB,
    WRK_DONE_SCRIPT,
    Check,
    RssSampler,
    paired_ratios,
    parse_wrk,
    summarize,
)
from bench.serve import run_client

MODES = ("copy", "splice")


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
    threads = min(clients, 2)
    argv = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{duration}s", "--timeout", "60s"]
    result = parse_wrk(run_client([*argv, "-s", str(script), url]).output)
    if result.errors:
        raise RuntimeError(f"wrk saw {result.errors} errors on {url}")
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
    checks: list[Check] = []
    script = base / "done.lua"
    script.write_text(WRK_DONE_SCRIPT)
    _step(f"starting a 2-node cluster in {base}")
    with LocalCluster(2, base / "cluster", log_level="WARN") as cluster:
        big, small = _setup_images(cluster, args.blob_mib, args.small_layers)
        ns = cluster.upstream.host
        node_a, node_b = cluster[0].mirror, cluster[1].mirror
        layer = big.layers[0]
        path = f"/v2/{big.name}/blobs/{layer.digest}?ns={ns}"
        _wait_peer(node_b.address, path)
        _step(f"node-1 holds a {layer.size / MIB:.0f} MiB layer; node-2 relays it")
        for mode in args.modes:
            _set_relay_mode(cluster, mode)
            _wait_peer(node_b.address, path)
            for clients in (1, 8):
                direct, relayed, rss = [], [], []
                for _ in range(args.repeat):
                    direct.append(_wrk(node_a.url + path, clients, args.duration, script))
                    time.sleep(0.3)
                    pids = {"relay": lambda: [node_b.process.pid or 0]}
                    with RssSampler(pids) as sampler:
                        relayed.append(_wrk(node_b.url + path, clients, args.duration, script))
                    rss.append(sampler.max_mib("relay"))
                    time.sleep(0.3)
                ratios = paired_ratios(relayed, direct)
                row = {
                    "direct_mib_s": direct,
                    "relayed_mib_s": relayed,
                    "ratios": ratios,
                    "relay_rss_mib": rss,
                }
                results["throughput"][f"{mode}/{clients}"] = row
                ratio = summarize(ratios)
                print(
                    f"    {mode:6} {clients} client(s): direct {summarize(direct).format()} MiB/s,"
                    f" relayed {summarize(relayed).format()} MiB/s, ratio {ratio.format(2)}"
                )
                checks.append(
                    Check(f"relay ({mode}, {clients} clients) vs direct", ratio.median, ">=", 0.9)
                )
        _step(f"timing {args.misses} misses (no peer holds the digest)")
        misses = _time_misses(node_b.address, ns, args.misses)
        results["miss_404_ms"] = {
            k: v * 1000 if k != "n" else v for k, v in _percentiles(misses).items()
        }
        checks.append(Check("404 after a miss, p99", results["miss_404_ms"]["p99"], "<", 30, " ms"))
        _step(f"time to first byte through a peer over {len(small.layers)} layers")
        cold = [
            _ttfb(node_b.address, f"/v2/{small.name}/blobs/{b.digest}?ns={ns}")
            for b in small.layers
        ]
        warm = [
            _ttfb(node_b.address, f"/v2/{small.name}/blobs/{b.digest}?ns={ns}")
            for b in small.layers
        ]
        direct_ttfb = [
            _ttfb(node_a.address, f"/v2/{small.name}/blobs/{b.digest}?ns={ns}")
            for b in small.layers
        ]
        results["ttfb_ms"] = {
            name: {k: v * 1000 if k != "n" else v for k, v in _percentiles(values).items()}
            for name, values in (("cold", cold), ("warm", warm), ("direct", direct_ttfb))
        }
    results["checks"] = [c.as_dict() for c in checks]
    _print_table(results)
    for check in checks:
        print(check.line())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"results written to {args.out}")
    subprocess.run(["rm", "-rf", str(base)], check=False)
    return 0


def _print_table(results: dict[str, Any]) -> None:
    print()
    print("| relay | clients | direct MiB/s | relayed MiB/s | ratio | relay RSS MiB |")
    print("|---|---|---|---|---|---|")
    for key, row in results["throughput"].items():
        mode, clients = key.split("/")
        print(
            f"| {mode} | {clients} | {summarize(row['direct_mib_s']).format()} |"
            f" {summarize(row['relayed_mib_s']).format()} | {summarize(row['ratios']).format(2)} |"
            f" {max(row['relay_rss_mib']):.0f} |"
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
