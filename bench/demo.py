"""`python -m bench demo`: the README's main command.

One node on this machine: an upstream registry (Debian's Distribution), a
containerd, and `mirror registry` over that containerd's content store. An image
is generated, pushed upstream and pulled into containerd with `ctr`; then every
blob of it is fetched through the mirror and checked against its digest.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.kit.containerd import ContainerdNode
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import generate_image, push_image
from bench.kit.mirror import MirrorNode
from bench.kit.procs import free_port
from bench.kit.registry import UpstreamRegistry

MIB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-mib", type=int, default=64, help="image size in MiB (default 64)")
    parser.add_argument("--layers", type=int, default=4, help="layer count (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster up until Ctrl-C")
    parser.add_argument("--dir", type=Path, default=None, help="working directory (default: temp)")


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _get(url: str) -> tuple[bytes, dict[str, str], float]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
    return body, headers, time.perf_counter() - started


def run(args: argparse.Namespace) -> int:
    base = args.dir or Path(tempfile.mkdtemp(prefix="mirror-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    _step(f"working directory {base}")
    with UpstreamRegistry(base / "upstream") as upstream, ContainerdNode("node-1", base) as node:
        _step(f"upstream registry at {upstream.url}; containerd node-1 at {node.address}")
        image = generate_image(
            base / "layout",
            name="demo/app",
            tag="v1",
            seed=42,
            total_size=args.size_mib * MIB,
            layers=args.layers,
        )
        ref = image.ref(upstream.host)
        push_image(image.layout_dir, image.tag, ref)
        _step(f"pushed {ref} ({image.total_size / MIB:.1f} MiB, {len(image.layers)} layers)")
        write_hosts_toml(node.config_path, upstream.host, upstream.url)
        pulled = node.pull(ref)
        _step(f"ctr pulled {ref} into node-1 in {pulled.duration:.2f}s")
        host = "127.0.0.1"
        mirror = MirrorNode(
            host=host,
            containerd_sock=node.address,
            workdir=base / "mirror-1",
            registry_port=free_port(host),
            router_port=free_port(host),
            metrics_port=free_port(host),
            log_level="INFO",
        )
        with mirror:
            _step(f"mirror registry serving node-1's content store at {mirror.url}")
            ns = f"?ns={upstream.host}"
            body, headers, _ = _get(f"{mirror.url}/v2/{image.name}/manifests/{image.tag}{ns}")
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            ok = digest == image.digest == headers.get("docker-content-digest")
            print(f"    manifest {image.tag} -> {digest[:19]}…  {'OK' if ok else 'MISMATCH'}")
            failures = 0 if ok else 1
            for blob in image.images[0].blobs()[1:]:
                data, _, seconds = _get(f"{mirror.url}/v2/{image.name}/blobs/{blob.digest}{ns}")
                good = "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest
                failures += not good
                rate = len(data) / MIB / max(seconds, 1e-9)
                print(
                    f"    blob {blob.digest[:19]}…  {len(data) / MIB:8.2f} MiB"
                    f"  {seconds * 1000:8.1f} ms  {rate:8.0f} MiB/s  {'OK' if good else 'MISMATCH'}"
                )
            if failures:
                _step(f"FAILED: {failures} item(s) did not match their digest")
                return 1
            _step("every item served by the mirror matched its digest")
            if args.keep:
                _step(f"cluster kept up (mirror {mirror.url}); Ctrl-C to stop")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
    return 0
