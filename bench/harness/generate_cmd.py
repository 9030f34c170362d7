"""`python -m bench generate`: the benchmark images, v1 and v2 of every size x layer count.

Random, seeded content (nothing dedupes between images, nothing compresses),
one OCI layout per image in a cache keyed by its parameters; `--registry`
pushes them too, as `<registry>/benchmark:v1-10MB-1` like Spegel's images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.harness.cases import ALL_SIZES, DEFAULT_LAYERS, matrix
from bench.harness.images import build_pair, default_cache_dir, push


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", nargs="+", default=list(ALL_SIZES), help="image sizes (default 10MB 100MB 1GB)"
    )
    parser.add_argument(
        "--layers", nargs="+", type=int, default=list(DEFAULT_LAYERS), help="layer counts (1 4)"
    )
    parser.add_argument("--registry", help="host:port to push to over plain HTTP (default: none)")
    parser.add_argument("--repository", default="benchmark", help="repository name (benchmark)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--salt", type=int, default=0, help="change to get different content")


def run(args: argparse.Namespace) -> int:
    for case in matrix(args.sizes, args.layers):
        for image in build_pair(case, args.cache_dir, args.salt):
            line = f"{image.tag:<14} {image.size / 2**20:8.1f} MiB  {image.layout_dir}"
            if args.registry:
                push(image, args.registry, args.repository)
                line += f"  -> {image.ref(args.registry, args.repository)}"
            print(line, flush=True)
    return 0
