"""`python -m bench analyze`: JSON, a markdown table and PNG charts from measured runs.

Several result files are merged first: on a real cluster the baseline and the
mirror are measured in separate runs (`measure --kube-context ... --mode`).
With `--by-nodes`, each file is one cluster size instead (`measure --nodes N`):
the create phase's p50 against node count, as a table and a chart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.harness import scaling
from bench.harness.analyze import write_report
from bench.harness.report import checks, markdown, rows
from bench.harness.results import load, merge

DEFAULT_RESULT = Path("bench/results/cluster-pulls.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results", nargs="*", type=Path, default=[DEFAULT_RESULT], help="result JSON file(s)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory")
    parser.add_argument("--name", default="cluster-pulls", help="file name stem of the outputs")
    parser.add_argument(
        "--by-nodes",
        action="store_true",
        help="one file per cluster size: create-phase p50 against node count",
    )


def run(args: argparse.Namespace) -> int:
    if args.by_nodes:
        return _by_nodes(args)
    merged = merge(load(path) for path in args.results)
    files = write_report(merged, args.out, args.name)
    print(markdown(merged))
    for kind, path in files.items():
        print(f"{kind}: {path}")
    found = checks(rows(merged))
    return 0 if all(c.passed for c in found) else 1


def _by_nodes(args: argparse.Namespace) -> int:
    from bench.harness import charts

    found = scaling.points(load(path) for path in args.results)
    if not found:
        print("no case measured with and without the mirror in these files")
        return 1
    table = scaling.markdown(found)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}-by-nodes.md").write_text(table + "\n")
    chart = charts.pull_time_by_nodes(found, args.out / f"{args.name}-by-nodes.png")
    print(table)
    print(f"chart: {chart}")
    found_checks = scaling.checks(found)
    for check in found_checks:
        print(check.line())
    return 0 if all(c.passed for c in found_checks) else 1
