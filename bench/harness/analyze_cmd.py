"""`python -m bench analyze`: JSON, a markdown table and PNG charts from measured runs.

Several result files are merged first: on a real cluster the baseline and the
mirror are measured in separate runs (`measure --kube-context ... --mode`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    merged = merge(load(path) for path in args.results)
    files = write_report(merged, args.out, args.name)
    print(markdown(merged))
    for kind, path in files.items():
        print(f"{kind}: {path}")
    found = checks(rows(merged))
    return 0 if all(c.passed for c in found) else 1
