"""`python -m bench demo`: the README's main command.

A 3-node cluster on this machine (127.0.0.1-3): one upstream registry
(Debian's Distribution), and per node a containerd whose `hosts.toml` was
written by `mirror configuration`, plus `mirror registry`. An image is pushed
upstream and pulled with `ctr` on node 1; then the upstream is stopped and the
same image is pulled on node 2, which can only get it from node 1 through the
mirror. For each layer it prints which peer served it and how fast, and checks
every blob on node 2 against its digest.

The image is built as registries serve them: an index for linux/amd64 and
linux/arm64 (with attestation manifests), gzip and zstd layers of real files
(directories, symlinks, hardlinks, whiteouts). Both nodes pull linux/amd64 and
unpack it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.kit.cluster import LocalCluster
from bench.kit.images import generate_image, push_image

MIB = 1024 * 1024
PLATFORM = "linux/amd64"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    parser.add_argument("--size-mib", type=int, default=64, help="image size in MiB (default 64)")
    parser.add_argument("--layers", type=int, default=4, help="layer count (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster up until Ctrl-C")
    parser.add_argument("--dir", type=Path, default=None, help="working directory (default: temp)")


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _mirror_events(log_path: Path, since: float) -> list[dict[str, object]]:
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("msg") == "mirrored" and entry.get("method") == "GET":
            stamp = (
                time.mktime(time.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            )
            if stamp >= since - 1:
                events.append(entry)
    return events


class DirectoryInUse(Exception):
    pass


@contextlib.contextmanager
def _own(base: Path) -> Iterator[None]:
    """Hold `base` for this demo: another demo (or anything else holding the lock)
    would share its containerd sockets and addresses."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".demo.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise DirectoryInUse(f"{base} is in use by another demo (pid {holder})") from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def run(args: argparse.Namespace) -> int:
    if args.nodes < 2:
        print("the demo needs at least 2 nodes")
        return 2
    base = args.dir or Path(tempfile.mkdtemp(prefix="mirror-demo-"))
    try:
        with _own(base):
            return _demo(args, base)
    except DirectoryInUse as exc:
        print(f"mirror demo: {exc}; use another --dir")
        return 2


def _demo(args: argparse.Namespace, base: Path) -> int:
    _step(f"starting a {args.nodes}-node cluster in {base}")
    with LocalCluster(args.nodes, base, log_level="INFO", keep=args.keep) as cluster:
        for node in cluster.nodes:
            print(
                f"    {node.name}: containerd {node.containerd.address}, mirror {node.mirror.url},"
                f" debug page {node.mirror.metrics_url}/debug/web/"
            )
        print(f"    upstream registry: {cluster.upstream.url}")
        image = generate_image(
            base / "layout",
            name="demo/app",
            tag="v1",
            seed=42,
            total_size=args.size_mib * MIB,
            layers=args.layers,
            files_per_layer=4,
            multi_arch=True,
            compression=("gzip", "zstd"),
            content="tree",
            attestations=True,
        )
        pulled = image.platform(PLATFORM)
        ref = image.ref(cluster.upstream.host)
        push_image(image.layout_dir, image.tag, ref)
        size = sum(blob.size for blob in pulled.blobs()) / MIB
        _step(
            f"pushed {ref}: {len(image.images)} platforms; {PLATFORM} is {size:.1f} MiB"
            f" in {len(pulled.layers)} gzip and zstd layers"
        )
        first = cluster.pull(0, ref, platform=PLATFORM)
        _step(f"node-1 pulled it from the upstream in {first.duration:.2f}s")
        time.sleep(1.0)  # let node-1 advertise what it now holds
        cluster.upstream.stop()
        _step("upstream registry stopped: from now on only peers can serve the image")
        started = time.time()
        second = cluster.pull(1, ref, platform=PLATFORM)
        _step(f"node-2 pulled it in {second.duration:.2f}s, through its mirror:")
        events = _mirror_events(cluster[1].mirror.process.log_path, started)
        wanted = (image.top, *pulled.blobs())
        sizes = {blob.digest: blob.size for blob in wanted}
        for event in events:
            seconds = float(event["duration_ms"]) / 1000  # type: ignore[arg-type]
            size = int(event["bytes"])  # type: ignore[call-overload]
            rate = size / MIB / max(seconds, 1e-9)
            kind = "layer" if sizes.get(str(event["key"]), 0) > 64 * 1024 else "meta "
            print(
                f"    {kind} {str(event['key'])[:19]}…  from {event['peer']:<21}"
                f" {size / MIB:8.2f} MiB {seconds * 1000:8.1f} ms {rate:8.0f} MiB/s"
            )
        failures = 0
        for blob in wanted:
            path = cluster[1].containerd.blob_path(blob.digest)
            good = (
                path.is_file()
                and "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == blob.digest
            )
            failures += not good
        served = {str(e["key"]) for e in events if e.get("outcome") == "peer"}
        missing = [d for d in sizes if d not in served]
        if failures or missing:
            _step(
                f"FAILED: {failures} blob(s) wrong on node-2, {len(missing)} not served by a peer"
            )
            return 1
        _step(f"all {len(sizes)} items on node-2 match their digests; every one came from a peer")
        if args.keep:
            cluster.upstream.start()
            _step("cluster kept up (upstream restarted); Ctrl-C to stop")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0
