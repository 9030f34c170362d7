"""`python -m bench cluster`: the benchmark cluster on this machine, up until Ctrl-C.

N nodes on 127.0.0.1..N, each a containerd and a `mirror registry`; one
upstream registry on 127.0.0.254 behind an emulated WAN link (a shaping relay:
token-bucket bandwidth cap and a fixed delay each way).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.harness.cases import DEFAULT_LAYERS, DEFAULT_SIZES, matrix
from bench.harness.images import default_cache_dir
from bench.harness.setup import add_link_arguments, make_cluster, push_pairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_link_arguments(parser)
    parser.add_argument(
        "--without-mirror", action="store_true", help="containerd straight to the upstream"
    )
    parser.add_argument(
        "--push", nargs="*", metavar="SIZE", help="push the benchmark images of these sizes"
    )
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())


def run(args: argparse.Namespace) -> int:
    cluster = make_cluster(args)
    print(f"==> starting {args.nodes} nodes in {cluster.base_dir}", flush=True)
    with cluster:
        if args.without_mirror:
            cluster.set_mode("baseline")
        upstream = cluster.upstream
        print(f"link: shaping relay (user space), {upstream.link.describe()}")
        print(f"upstream as nodes see it: {upstream.url}  (counts bytes, shapes traffic)")
        print(f"upstream registry itself: http://{upstream.direct_host}  (push here)")
        for node in cluster.nodes:
            mirror = "" if args.without_mirror else f"  mirror {node.mirror.url}"
            print(
                f"  {node.name} {node.ip}: containerd {node.containerd.address}{mirror}"
                f"  metrics {node.mirror.metrics_url}"
            )
        if args.push is not None:
            sizes = args.push or list(DEFAULT_SIZES)
            for case, pair in push_pairs(
                cluster, matrix(sizes, DEFAULT_LAYERS), args.cache_dir
            ).items():
                print(f"pushed {case.name}: {', '.join(i.ref(upstream.host) for i in pair)}")
        first = cluster[0].containerd
        print(
            "\npull on node 1:\n"
            f"  ctr --address {first.address} -n k8s.io images pull --plain-http "
            f"--hosts-dir {first.config_path} {upstream.host}/benchmark:v1-10MB-1\n"
            f"push images: python -m bench generate --registry {upstream.direct_host}\n"
            "Ctrl-C to stop.",
            flush=True,
        )
        last = 0
        try:
            while True:
                time.sleep(5)
                served = upstream.served_bytes()
                if served != last:
                    print(f"upstream served {served / 1e6:.1f} MB so far", flush=True)
                    last = served
        except KeyboardInterrupt:
            print("\n==> stopping")
    return 0
