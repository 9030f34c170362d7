"""Shared by `cluster` and `measure`: link flags, the cluster, the images in its upstream."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.harness.cases import Case
from bench.harness.images import BenchImage, build_pair, push
from bench.harness.localcluster import BenchCluster
from bench.kit.wan import MB, LinkSpec


def add_link_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=5, help="cluster size (default 5)")
    parser.add_argument(
        "--bandwidth", type=float, default=100.0, help="upstream link, MB/s each way (default 100)"
    )
    parser.add_argument(
        "--rtt", type=float, default=20.0, help="upstream link round trip, ms (default 20)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="working directory, kept (default: a short temporary one)",
    )
    parser.add_argument("--log-level", default="WARN", help="mirror log level (default WARN)")


def link_of(args: argparse.Namespace) -> LinkSpec:
    return LinkSpec(rate=args.bandwidth * MB, rtt=args.rtt / 1000)


def link_settings(link: LinkSpec) -> dict[str, object]:
    return {
        "kind": "shaping relay",
        "rate_bytes_s": link.rate,
        "rtt_s": link.rtt,
        "description": link.describe(),
    }


def make_cluster(args: argparse.Namespace) -> BenchCluster:
    """Under `--dir` (kept), else a temporary directory removed on stop."""
    return BenchCluster(args.nodes, args.dir, link_of(args), log_level=args.log_level)


def push_pairs(
    cluster: BenchCluster, cases: list[Case], cache_dir: Path, salt: int = 0
) -> dict[Case, tuple[BenchImage, BenchImage]]:
    """Build (or reuse) every pair and push it to the registry behind the link, directly."""
    pairs = {}
    for case in cases:
        pair = build_pair(case, cache_dir, salt)
        for image in pair:
            push(image, cluster.upstream.direct_host)
        pairs[case] = pair
    return pairs
