"""`python -m bench dht`: Kademlia on N loopback nodes in one process.

Measures lookup latency (time to the first provider and to the end of the
lookup), hops and messages per lookup, success rates without churn and after
removing 10% and 30% of the nodes, the cost of providing 10,000 keys from one
node, and the steady-state datagram rate per node.

All nodes share one Python process (and so one core): latencies are mostly
CPU time spent by the nodes a lookup visits, not network time. One process
holding a thousand nodes' state also makes the cyclic garbage collector's full
passes long (over a second at 1,000 nodes, longer than a request timeout),
which a real node never sees: the harness runs the set-up phases with the
collector off and freezes what they built before measuring.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from dht import DhtNode, LookupStats, NodeConfig, StaticBootstrapper


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1000, help="nodes in the network")
    parser.add_argument("--keys", type=int, default=20_000, help="keys provided, spread over nodes")
    parser.add_argument("--lookups", type=int, default=1000, help="lookups per phase")
    parser.add_argument(
        "--provide-keys", type=int, default=10_000, help="keys for the bulk provide"
    )
    parser.add_argument("--steady-seconds", type=float, default=30.0, help="steady-state window")
    parser.add_argument("--timeout", type=float, default=0.5, help="per-request timeout (s)")
    parser.add_argument("--hosts", type=int, default=1, help="spread nodes over 127.0.0.1..N")
    parser.add_argument(
        "--provide-concurrency",
        type=int,
        default=16,
        help="nodes announcing their keys at the same time (all share one CPU)",
    )
    parser.add_argument(
        "--cluster-key", action="store_true", help="seal every datagram with a shared cluster key"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/dht.json"))


@dataclass
class _Running:
    node: DhtNode
    scope: trio.CancelScope
    keys: list[str] = field(default_factory=list)


async def _run_node(
    config: NodeConfig,
    bootstrapper: StaticBootstrapper | None,
    *,
    task_status: trio.TaskStatus[_Running],
) -> None:
    with trio.CancelScope() as scope:
        async with DhtNode.open(config, bootstrapper) as node:
            task_status.started(_Running(node, scope))
            await trio.sleep_forever()


def _dropped(nodes: list[_Running]) -> dict[str, int]:
    """Datagrams every node dropped, by reason, summed."""
    totals: dict[str, int] = {}
    for r in nodes:
        for name, value in vars(r.node.stats).items():
            if name.startswith("dropped_"):
                totals[name[len("dropped_") :]] = totals.get(name[len("dropped_") :], 0) + value
    return totals


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _datagrams(nodes: list[_Running]) -> int:
    return sum(r.node.stats.datagrams_in + r.node.stats.datagrams_out for r in nodes)


async def _quiesce(nodes: list[_Running], idle: float = 0.5, limit: float = 120.0) -> None:
    """Wait until the network is quiet (no datagram for `idle` seconds)."""
    with trio.move_on_after(limit):
        before = _datagrams(nodes)
        while True:
            await trio.sleep(idle)
            now = _datagrams(nodes)
            if now == before:
                return
            before = now


async def _lookups(alive: list[_Running], rng: random.Random, count: int) -> dict[str, Any]:
    candidates = [r for r in alive if r.keys]
    first_ms: list[float] = []
    full_ms: list[float] = []
    hops: list[int] = []
    messages: list[int] = []
    found = 0
    for _ in range(count):
        owner = rng.choice(candidates)
        key = rng.choice(owner.keys)
        asker = rng.choice(alive)
        while asker is owner:
            asker = rng.choice(alive)
        stats = LookupStats()
        start = time.perf_counter()
        first = None
        ok = False
        async for provider in asker.node.get_providers(key, limit=20, stats=stats):
            if first is None:
                first = time.perf_counter() - start
            if provider.node_id == owner.node.node_id:
                ok = True
        full = time.perf_counter() - start
        found += ok
        full_ms.append(full * 1000)
        if first is not None:
            first_ms.append(first * 1000)
        hops.append(stats.hops)
        messages.append(stats.messages)
    return {
        "lookups": count,
        "success_rate": found / count,
        "first_provider_ms": _summary(first_ms),
        "lookup_ms": _summary(full_ms),
        "hops": {"mean": statistics.fmean(hops), "max": max(hops)},
        "messages": {"mean": statistics.fmean(messages), "max": max(messages)},
    }


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": _percentile(values, 0.50),
        "p99": _percentile(values, 0.99),
        "max": max(values) if values else float("nan"),
    }


async def _join(
    nursery: trio.Nursery, count: int, config: Callable[[int], NodeConfig], rng: random.Random
) -> list[_Running]:
    """Start `count` nodes, each bootstrapping from a few already joined."""
    first: _Running = await nursery.start(_run_node, config(0), None)
    nodes = [first]
    seeds = [f"{first.node.address[0]}:{first.node.address[1]}"]
    for i in range(1, count):
        bootstrapper = StaticBootstrapper(seeds)
        running: _Running = await nursery.start(_run_node, config(i), bootstrapper)
        nodes.append(running)
        if i % 50 == 0:
            for r in nodes:
                await r.node.wait_ready()
            await _quiesce(nodes, idle=0.05)
            seeds = [f"{r.node.address[0]}:{r.node.address[1]}" for r in rng.sample(nodes, 3)]
    for r in nodes:
        await r.node.wait_ready()
    await _quiesce(nodes)
    return nodes


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    results: dict[str, Any] = {"nodes": args.nodes, "keys": args.keys, "timeout_s": args.timeout}
    results["cluster_key"] = args.cluster_key
    cluster_key = rng.randbytes(32) if args.cluster_key else None

    def config(i: int) -> NodeConfig:
        return NodeConfig(
            bind_host=f"127.0.0.{1 + i % args.hosts}",
            bind_port=0,
            registry_port=5000,
            request_timeout=args.timeout,
            node_id=rng.randbytes(16),
            cluster_key=cluster_key,
        )

    gc.disable()
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        nodes = await _join(nursery, args.nodes, config, rng)
        results["join_s"] = time.perf_counter() - t0
        sizes = [r.node.stats.routing_table_size for r in nodes]
        results["routing_table_size"] = {"mean": statistics.fmean(sizes), "min": min(sizes)}
        print(f"joined {args.nodes} nodes in {results['join_s']:.1f} s", file=sys.stderr)

        keys = [f"sha256:{rng.randbytes(32).hex()}" for _ in range(args.keys)]
        for i, key in enumerate(keys):
            nodes[i % len(nodes)].keys.append(key)
        t0 = time.perf_counter()
        before = _datagrams(nodes)
        limiter = trio.CapacityLimiter(args.provide_concurrency)

        async def provide(r: _Running) -> None:
            async with limiter:
                await r.node.provide(r.keys)

        async with trio.open_nursery() as providers:
            for r in nodes:
                providers.start_soon(provide, r)
        results["provide_all"] = {
            "seconds": time.perf_counter() - t0,
            "datagrams": _datagrams(nodes) - before,
        }
        await _quiesce(nodes)
        print(
            f"provided {args.keys} keys in {results['provide_all']['seconds']:.1f} s",
            file=sys.stderr,
        )
        gc.collect()
        gc.freeze()  # what the set-up built is long-lived: keep it out of collections
        gc.enable()

        bulk = nodes[-1]
        bulk_keys = [f"sha256:{rng.randbytes(32).hex()}" for _ in range(args.provide_keys)]
        stats0 = bulk.node.stats
        t0 = time.perf_counter()
        await bulk.node.provide(bulk_keys)
        stats1 = bulk.node.stats
        results["provide_bulk"] = {
            "keys": args.provide_keys,
            "seconds": time.perf_counter() - t0,
            "datagrams_out": stats1.datagrams_out - stats0.datagrams_out,
            "datagrams_in": stats1.datagrams_in - stats0.datagrams_in,
            "lookups": stats1.lookups - stats0.lookups,
        }
        await bulk.node.withdraw(bulk_keys)
        await _quiesce(nodes)
        gc.collect()
        gc.freeze()  # the records just stored elsewhere stay for the rest of the run
        print("bulk provide done", file=sys.stderr)

        before, t0 = _datagrams(nodes), time.perf_counter()
        await trio.sleep(args.steady_seconds)
        elapsed = time.perf_counter() - t0
        results["steady_datagrams_per_node_s"] = (
            (_datagrams(nodes) - before) / 2 / len(nodes) / elapsed  # in + out count each once
        )

        results["churn_0"] = await _lookups(nodes, rng, args.lookups)
        print("lookups without churn done", file=sys.stderr)
        alive = list(nodes)
        rng.shuffle(alive)
        for label, fraction in (("churn_10", 0.10), ("churn_30", 0.30)):
            target = round(len(nodes) * (1 - fraction))
            while len(alive) > target:
                alive.pop().scope.cancel()
            await trio.lowlevel.checkpoint()
            results[label] = await _lookups(alive, rng, args.lookups)
            print(f"lookups at {label} done", file=sys.stderr)
        results["dropped"] = _dropped(nodes)
        nursery.cancel_scope.cancel()
    return results


def _print_table(results: dict[str, Any]) -> None:
    rows = [
        ("nodes", f"{results['nodes']}" + (" (cluster key)" if results.get("cluster_key") else "")),
        ("join (s)", f"{results['join_s']:.1f}"),
        (
            "routing table size mean/min",
            f"{results['routing_table_size']['mean']:.0f} / {results['routing_table_size']['min']}",
        ),
        (
            "provide all keys (s) / datagrams",
            f"{results['provide_all']['seconds']:.1f} / {results['provide_all']['datagrams']}",
        ),
    ]
    bulk = results["provide_bulk"]
    rows.append((f"provide {bulk['keys']} keys from one node (s)", f"{bulk['seconds']:.2f}"))
    rows.append(
        (
            "  datagrams out / in / lookups",
            f"{bulk['datagrams_out']} / {bulk['datagrams_in']} / {bulk['lookups']}",
        )
    )
    rows.append(
        ("steady state datagrams/s per node", f"{results['steady_datagrams_per_node_s']:.2f}")
    )
    for label in ("churn_0", "churn_10", "churn_30"):
        r = results[label]
        first, full = r["first_provider_ms"], r["lookup_ms"]
        rows.append((f"[{label}] success rate", f"{100 * r['success_rate']:.2f} %"))
        rows.append(
            (
                f"[{label}] first provider p50/p99/max (ms)",
                f"{first['p50']:.2f} / {first['p99']:.2f} / {first['max']:.2f}",
            )
        )
        rows.append(
            (
                f"[{label}] full lookup p50/p99/max (ms)",
                f"{full['p50']:.2f} / {full['p99']:.2f} / {full['max']:.2f}",
            )
        )
        rows.append(
            (
                f"[{label}] hops mean/max, messages mean/max",
                f"{r['hops']['mean']:.2f} / {r['hops']['max']}, "
                f"{r['messages']['mean']:.1f} / {r['messages']['max']}",
            )
        )
    dropped = {k: v for k, v in results.get("dropped", {}).items() if v}
    rows.append(("datagrams dropped", ", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def run(args: argparse.Namespace) -> int:
    try:
        results = trio.run(_main, args)
    finally:
        gc.unfreeze()
        gc.enable()
    _print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
