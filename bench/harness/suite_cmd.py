"""`python -m bench suite`: every image size and layer count, then the analysis.

As Spegel's benchmark suite: `measure` over the whole matrix (10 MB, 100 MB and
1 GB images in 1 and 4 layers, create and rolling-update phases, with and
without the mirror, side by side), then the markdown table and the charts that
`analyze` writes. Every `measure` option but `--sizes` and `--cases` applies.
"""

from __future__ import annotations

import argparse

from bench.harness import measure_cmd
from bench.harness.cases import ALL_SIZES, DEFAULT_SIZES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    measure_cmd.add_arguments(parser)
    parser.set_defaults(name="cluster-pulls-suite")


def whole_matrix(args: argparse.Namespace) -> argparse.Namespace:
    """`measure`'s arguments for every size and layer count."""
    if args.sizes or args.cases:
        raise SystemExit("suite measures every size and case: use measure for a selection")
    args.sizes = [size for size in ALL_SIZES if size not in DEFAULT_SIZES]
    return args


def run(args: argparse.Namespace) -> int:
    args = whole_matrix(args)
    print(f"==> the whole matrix: {', '.join(ALL_SIZES)} x {args.layers} layers", flush=True)
    return measure_cmd.run(args)
