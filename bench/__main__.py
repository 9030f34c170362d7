"""`python -m bench <command>`: the benchmark harness.

Each command lives in its own module `bench/<command>.py`, which provides
`add_arguments(parser)` and `run(args) -> int`. Modules are imported lazily so
that one command's heavy imports do not slow the others down. Every command's
`--help` works with the project alone; what a command needs from the `bench`
extra is checked before it runs, and a missing package is named with the extra
to install.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

COMMANDS: dict[str, str] = {
    "demo": "the main job: a local cluster, a pull through the mirror, checked by digest",
    "serve": "hot path: blob throughput and manifest requests/s vs nginx and Distribution",
    "dht": "Kademlia: lookup latency, hops, churn, provide cost on N loopback nodes",
    "dht-flood": "a provider-record flood against one DHT node: RSS, records held, loop lag",
    "proxy": "peer relay vs direct read, 404 latency, time to first byte",
    "relay-cpu": "the proving relay's movers alone (copy vs tee): MiB/s and CPU per GiB",
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
    "dht-flood": "bench.dht_flood",
    "relay-cpu": "bench.relay_cpu",
}
# What the `bench` extra brings that a command needs (pyproject.toml).
EXTRA = "bench"
NEEDS: dict[str, tuple[str, ...]] = {
    "demo": ("zstandard",),  # its image has zstd layers
    "measure": ("rich", "matplotlib"),  # a progress bar, then the report's charts
    "analyze": ("matplotlib",),
}
EXTRA_MODULES = frozenset(module for modules in NEEDS.values() for module in modules)


def missing_extra(command: str, modules: tuple[str, ...]) -> str:
    return (
        f"python -m bench {command} needs {', '.join(modules)}, from the `{EXTRA}` extra: "
        f"pip install 'trio-mirror[{EXTRA}]' (in a checkout: pip install -e '.[{EXTRA}]')"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    first, rest = parser.parse_known_args(argv)
    command = first.command
    module = importlib.import_module(MODULES.get(command, f"bench.{command}"))
    command_parser = argparse.ArgumentParser(prog=f"python -m bench {command}")
    module.add_arguments(command_parser)
    args = command_parser.parse_args(rest)
    absent = tuple(m for m in NEEDS.get(command, ()) if importlib.util.find_spec(m) is None)
    if absent:
        print(missing_extra(command, absent), file=sys.stderr)
        return 2
    try:
        return int(module.run(args) or 0)
    except ModuleNotFoundError as exc:
        if exc.name not in EXTRA_MODULES:
            raise
        print(missing_extra(command, (exc.name,)), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
