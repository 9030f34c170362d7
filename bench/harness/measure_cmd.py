"""`python -m bench measure`: cluster pull times with and without the mirror, side by side.

Locally (default): a cluster on this machine, the upstream behind an emulated
WAN link; for each image pair the create phase (every node pulls v1 at once)
and the update phase (v2, 20% of the nodes at a time), once with the mirror and
once without, in the same run. With `--kube-context`: the same phases as
DaemonSets on a real cluster, durations from the kubelet's events; one mode
per run, named by `--mode`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from bench.harness import kube_measure, local_measure
from bench.harness.analyze import write_report
from bench.harness.cases import DEFAULT_LAYERS, select_cases
from bench.harness.images import default_cache_dir
from bench.harness.kube import Kubectl
from bench.harness.localcluster import BenchCluster
from bench.harness.report import markdown
from bench.harness.results import Run
from bench.harness.rollout import max_unavailable
from bench.harness.setup import add_link_arguments, link_settings, make_cluster, push_pairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_link_arguments(parser)
    parser.add_argument(
        "--sizes", nargs="+", default=[], help="sizes to add to 10MB and 100MB (e.g. 1GB)"
    )
    parser.add_argument("--layers", nargs="+", type=int, default=list(DEFAULT_LAYERS))
    parser.add_argument("--cases", nargs="+", default=[], help="only these cases, e.g. 10MB-1")
    parser.add_argument("--max-unavailable", default="20%", help="rolling update batch (20%%)")
    parser.add_argument(
        "--batch-gap", type=float, default=1.0, help="seconds between update batches (default 1)"
    )
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory")
    parser.add_argument("--name", default="cluster-pulls", help="file name stem of the outputs")
    kube = parser.add_argument_group("real cluster")
    kube.add_argument("--kube-context", help="measure on this kubectl context instead")
    kube.add_argument("--namespace", default="mirror-benchmark")
    kube.add_argument("--registry", help="host[:port] the images were pushed to (generate)")
    kube.add_argument("--mode", choices=("baseline", "mirror"), help="what the cluster runs")
    kube.add_argument("--helper-image", default="docker.io/library/alpine:3.20")
    kube.add_argument("--no-clear", action="store_true", help="do not remove images first")


def _machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def _ctr_call_seconds(cluster: BenchCluster) -> float:
    """What one ctr call costs here (no pull): the floor under every pull time."""
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        cluster[0].containerd.images()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run_local(args: argparse.Namespace) -> Run:
    cases = select_cases(args.sizes, args.layers, args.cases)
    run = Run("local")
    cluster = make_cluster(args)
    print(
        f"==> {args.nodes} nodes in {cluster.base_dir}; cases: {', '.join(c.name for c in cases)}"
    )
    with cluster:
        link = cluster.upstream.link
        print(f"==> upstream link: shaping relay (user space), {link.describe()}", flush=True)
        pairs = push_pairs(cluster, cases, args.cache_dir)
        print("==> images pushed", flush=True)
        run.settings = {
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "nodes": args.nodes,
            "max_unavailable": args.max_unavailable,
            "first_update_batch": max_unavailable(args.max_unavailable, args.nodes),
            "batch_gap_s": args.batch_gap,
            "link": link_settings(link),
            "modes": list(local_measure.MODE_ORDER),
            "ctr_call_s": _ctr_call_seconds(cluster),
            "machine": _machine(),
        }
        plan = local_measure.Plan(max_unavailable=args.max_unavailable, batch_gap=args.batch_gap)
        local_measure.measure(cluster, run, pairs, plan)
    run.settings["machine"]["loadavg_end"] = os.getloadavg()
    return run


def run_kube(args: argparse.Namespace) -> Run:
    if not args.registry or not args.mode:
        raise SystemExit("--kube-context needs --registry (where generate pushed) and --mode")
    cases = select_cases(args.sizes, args.layers, args.cases)
    plan = kube_measure.KubePlan(
        registry=args.registry,
        mode=args.mode,
        max_unavailable=args.max_unavailable,
        clear=not args.no_clear,
        helper_image=args.helper_image,
    )
    run = Run("kubernetes")
    run.settings = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "context": args.kube_context,
        "max_unavailable": args.max_unavailable,
    }
    return kube_measure.measure(Kubectl(args.kube_context, args.namespace), run, cases, plan)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    result = run_kube(args) if args.kube_context else run_local(args)
    name = f"{args.name}-{args.mode}" if args.kube_context else args.name
    files = write_report(result, args.out, name)
    print()
    print(markdown(result))
    for kind, path in files.items():
        print(f"{kind}: {path}")
    print(f"measured in {time.monotonic() - started:.0f}s")
    return 0
