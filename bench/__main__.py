"""`python -m bench <command>`: the benchmark harness.

Each command lives in its own module `bench/<command>.py`, which provides
`add_arguments(parser)` and `run(args) -> int`. Modules are imported lazily so
that one command's heavy imports do not slow the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "demo": "the main job: a local cluster, a pull through the mirror, checked by digest",
    "serve": "hot path: blob throughput and manifest requests/s vs nginx and Distribution",
    "dht": "Kademlia: lookup latency, hops, churn, provide cost on N loopback nodes",
    "proxy": "peer relay vs direct read, 404 latency, time to first byte",
    "generate": "benchmark images: v1 and v2 of 10 MB / 100 MB / 1 GB in 1 and 4 layers",
    "cluster": "N local nodes with mirrors and an upstream behind an emulated WAN link",
    "measure": "cluster pull times with and without the mirror: create and rolling update",
    "analyze": "JSON, markdown table and PNG charts from measure's results",
    "suite": "measure over every size (10 MB, 100 MB, 1 GB) and layer count, then analyze",
    "web_overhead": "blob throughput while /metrics is scraped and the debug page is open",
    "coldstart-sim": "a new image reaching 1,000-5,000 nodes at once: the real cores, simulated",
    "soak": "mixed hostile load phase after phase: RSS, fds, loop lag and 5xx over time",
    "stripe": "a 1 GB layer from 4 holders capped at 100 MB/s at once vs from one",
}
# Commands not in bench/<name>.py (bench/measure.py holds the shared stats helpers).
MODULES = {
    **{
        name: f"bench.harness.{name}_cmd"
        for name in ("generate", "cluster", "measure", "analyze", "suite")
    },
    "coldstart-sim": "bench.coldstart_sim",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    first, rest = parser.parse_known_args(argv)
    module = importlib.import_module(MODULES.get(first.command, f"bench.{first.command}"))
    command_parser = argparse.ArgumentParser(prog=f"python -m bench {first.command}")
    module.add_arguments(command_parser)
    return int(module.run(command_parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
