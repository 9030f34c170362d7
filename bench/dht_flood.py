"""`python -m bench dht-flood`: a provider-record flood against one real DHT node.

A node runs in a child process (no cluster key: an open DHT, where anyone can
announce). Flooders on several loopback addresses follow the protocol (a
cookie first, then ADD_PROVIDER datagrams of 61 random keys each, a window of
them in flight) and try to store `--records` records in all. The node reports
its RSS, the records it holds and how late a 5 ms timer fires on its event loop
(the stall a `GET /v2/` would see) every half second; the records are given a
short TTL so that their expiry, after the flood, is measured too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPORT_EVERY = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=1_000_000, help="records attempted")
    parser.add_argument("--sources", type=int, default=10, help="flooding addresses")
    parser.add_argument("--ttl", type=float, default=60.0, help="record TTL on the node (s)")
    parser.add_argument("--window", type=int, default=64, help="datagrams in flight per source")
    parser.add_argument("--host", default="127.0.0.201", help="the node's address")
    parser.add_argument("--out", type=Path, default=Path("bench/results/dht_flood.json"))


# -- the node (child process) -------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def _serve(host: str, port: int, ttl: float) -> None:
    import trio

    from dht import DhtNode, NodeConfig

    config = NodeConfig(
        bind_host=host, bind_port=port, record_ttl=ttl, reprovide_interval=ttl * 0.75
    )
    async with DhtNode.open(config) as node:
        print(json.dumps({"address": list(node.address)}), flush=True)
        worst = 0.0
        next_report = trio.current_time() + REPORT_EVERY
        while True:
            before = trio.current_time()
            await trio.sleep(0.005)
            worst = max(worst, trio.current_time() - before - 0.005)
            if trio.current_time() >= next_report:
                next_report += REPORT_EVERY
                line = {"rss": _rss_bytes(), "records": node.stats.records_stored}
                print(json.dumps({**line, "lag": worst}), flush=True)
                worst = 0.0


# -- the flooders (this process) --------------------------------------------------


def _flood(target: tuple[str, int], sources: int, records: int, window: int) -> dict[str, Any]:
    from dht.messages import MAX_KEYS_PER_ADD, AddProvider, Envelope, Ping, decode, encode

    rng = random.Random(1)
    per_source = records // sources
    stored = sent = 0
    for i in range(sources):
        host = f"127.0.0.{10 + i}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.settimeout(2.0)
        node_id = rng.randbytes(16)
        sock.sendto(encode(Envelope(1, node_id, Ping()), pad_to=128), target)
        cookie = decode(sock.recvfrom(2048)[0]).cookie
        port = sock.getsockname()[1]
        datagrams = -(-per_source // MAX_KEYS_PER_ADD)
        in_flight = 0
        for n in range(datagrams):
            keys = tuple(rng.randbytes(16) for _ in range(MAX_KEYS_PER_ADD))
            message = AddProvider(host, port, 5000, keys)
            sock.sendto(encode(Envelope(n + 2, node_id, message, cookie)), target)
            sent += len(keys)
            in_flight += 1
            while in_flight >= window or (n == datagrams - 1 and in_flight):
                try:
                    reply = decode(sock.recvfrom(2048)[0]).message
                except TimeoutError:
                    in_flight = 0
                    break
                in_flight -= 1
                stored += getattr(reply, "stored", 0)
        sock.close()
    return {"attempted": sent, "acknowledged": stored}


def _read(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        raise RuntimeError("the node exited")
    result: dict[str, Any] = json.loads(line)
    return result


def _watch(child: subprocess.Popen[str], seconds: float) -> list[dict[str, Any]]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(_read(child))
    return out


def run(args: argparse.Namespace) -> int:
    port = 5001
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.dht_flood", args.host, str(port), str(args.ttl)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = tuple(_read(child)["address"])
        idle = _watch(child, 2.0)
        t0 = time.monotonic()
        flood = _flood((str(address[0]), int(address[1])), args.sources, args.records, args.window)
        flood["seconds"] = time.monotonic() - t0
        during = _watch(child, 1.0)
        # The records lapse `ttl` after they were stored: watch until they are gone.
        expiry = _watch(child, max(0.0, args.ttl - flood["seconds"] - 1.0) + 10.0)
    finally:
        child.terminate()
        child.wait(timeout=10)
    mib = 2**20
    results = {
        "records_attempted": flood["attempted"],
        "records_acknowledged": flood["acknowledged"],
        "flood_seconds": flood["seconds"],
        "rss_idle_mib": idle[-1]["rss"] / mib,
        "rss_flooded_mib": max(r["rss"] for r in during) / mib,
        "records_held": during[-1]["records"],
        "records_after_expiry": expiry[-1]["records"],
        "rss_after_expiry_mib": expiry[-1]["rss"] / mib,
        "max_loop_lag_idle_ms": max(r["lag"] for r in idle) * 1000,
        "max_loop_lag_expiry_ms": max(r["lag"] for r in expiry) * 1000,
    }
    for name, value in results.items():
        print(f"{name:32} {value:,.1f}" if isinstance(value, float) else f"{name:32} {value:,}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    import trio

    host, port_text, ttl_text = sys.argv[1:4]
    os.environ.setdefault("PYTHONHASHSEED", "0")
    trio.run(_serve, host, int(port_text), float(ttl_text))
