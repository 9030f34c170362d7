"""`python -m bench stripe`: a huge layer from four capped holders at once, vs from one.

A 5-node local cluster. Nodes 1-4 hold an image of one 1 GiB layer; each caps what
it uploads to peers at 100 MB/s (`--peer-upload-rate`, the per-node uplink budget
for exactly this traffic: see docs/architecture.md, "Striping"). Node 5 pulls the
image through its mirror with `ctr images pull` (the upstream is stopped, so every
byte comes from the holders), striped (the default, up to 4 holders) and from one
holder (`--mirror-stripe-width=1`), side by side in each round; its image and
content are removed after each pull.

containerd 2.1 by default: its pull runs in the daemon (the transfer service), as
the kubelet's does. containerd 1.6's `ctr` fetches in its own process and streams
every byte to the daemon over gRPC, about 110 MB/s on the project's test machine:
that would measure ctr, not the layer's way here.

The figure is the layer's arrival: from the pull's start until the layer is
committed to node 5's content store (the unpack that follows is the same work
either way; the whole pull is reported too, and the transfer alone: from containerd's
opening the layer's ingest, just before its GET, to the commit). The run-by-run ratio of arrival
times, one holder / striped, must be >= 3 (the ideal is 4). A second scenario
reads the layer from node 5's mirror with curl into /dev/null: the mirror's own
delivery, without containerd's ingest competing for the same two cores. Node 5's
mirror's RSS, the CPU seconds of its mirror, of its containerd and of the holders,
and the share of the machine's cores busy are sampled during each run: on a small
machine a striped pull by containerd is bound by CPU (hashing and copying in the
mirror, hashing and writing in containerd), not by the holders' uplinks. On a VM
that hands freed memory back to its host, containerd's writes into the page cache
cost several times more than on a host (`write_scratch`); each pull is preceded by
writing and dropping a scratch file of the layer's size, for both subjects
(`--no-prime`: not).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import itertools
import os
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.curl import fetch_bytes
from bench.kit.cluster import LocalCluster
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.metrics import metric_sum
from bench.kit.procs import KitError
from bench.measure import MIB, Check, paired_ratios, summarize
from bench.proxy import _wait_peer
from bench.result_file import write_json
from bench.runner import RetryPolicy, RunHooks, Trial, run_trials, trial_matrix
from bench.sampling import PidSource, UsageMeter

MB = 1_000_000
STRIPED, ONE = "striped", "one holder"
PULL, CURL = "containerd pull", "curl GET"
TARGET = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layer-mib", type=int, default=1024, help="layer size (1024)")
    parser.add_argument("--holders", type=int, default=4, help="nodes holding it (4)")
    parser.add_argument(
        "--uplink-mb", type=float, default=100.0, help="each holder's upload cap, MB/s (100)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds (3)")
    parser.add_argument(
        "--containerd", default="2.1", choices=("1.6", "1.7", "2.1"), help="series (2.1)"
    )
    parser.add_argument(
        "--no-prime",
        dest="prime",
        action="store_false",
        help="do not write and drop a scratch file of the layer's size before each containerd"
        " pull (see write_scratch: on a VM that hands freed memory back to its host, that"
        " leaves reused pages for the ingest)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/stripe.json"))
    parser.add_argument("--dir", type=Path, default=None, help="working directory (temp)")


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _striped_bodies(metrics_url: str) -> float:
    return metric_sum(metrics_url, "mirror_striped_bodies_total", outcome="peer")


def _set_width(cluster: LocalCluster, node: int, width: int, path: str) -> None:
    """Restart the puller's mirror with `--mirror-stripe-width`; wait until a peer serves."""
    mirror = cluster[node].mirror
    kept = [a for a in mirror.process.argv if not a.startswith("--mirror-stripe-width")]
    argv = [*kept, f"--mirror-stripe-width={width}"]
    if argv == mirror.process.argv:
        return
    mirror.stop()
    mirror.process.argv = argv
    mirror.start()
    _wait_peer(mirror.address, path, timeout=60)


@dataclass(frozen=True)
class PullRun:
    arrival: float  # seconds from the start until the layer was committed (or read whole)
    pull: float  # the whole pull, unpack included (curl: the same as arrival)
    transfer: float  # from containerd's opening the layer's ingest to its commit (curl: arrival)
    idle_share: float  # of the 100 ms samples of the ingest's size, the share that saw no growth
    striped: bool  # the mirror's striped-bodies counter went up
    rss_mib: float
    cpu_s: float  # the puller's mirror's CPU seconds
    containerd_cpu_s: float  # the puller's containerd's
    machine_busy: float  # of the machine's cores, the share busy (every process)
    holders_cpu_s: float  # every holder's mirror


class ArrivalWatch:
    """When containerd opens the layer's ingest (just before it sends the GET) and when the
    blob is committed to the content store, polled every 2 ms; and the ingest's size
    every 100 ms meanwhile, to see whether the bytes arrive steadily."""

    def __init__(self, content: Path, digest: str) -> None:
        self.path = content / "blobs" / "sha256" / digest.removeprefix("sha256:")
        self.ingest = content / "ingest"
        self.ref_suffix = digest
        self.requested: float | None = None
        self.arrived: float | None = None
        self.growth: list[tuple[float, int]] = []
        self._data: Path | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="arrival", daemon=True)

    def __enter__(self) -> ArrivalWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        next_size = 0.0
        while not self._stop.wait(0.002):
            now = time.perf_counter()
            if self._data is None:
                self._find_ingest(now)
            elif now >= next_size:
                with contextlib.suppress(OSError):
                    self.growth.append((now, self._data.stat().st_size))
                next_size = now + 0.1
            if self.path.exists():
                self.arrived = now
                return

    def _find_ingest(self, now: float) -> None:
        with contextlib.suppress(OSError):
            for entry in self.ingest.iterdir():
                ref = (entry / "ref").read_text()
                if ref.endswith(self.ref_suffix):
                    self.requested, self._data = now, entry / "data"
                    return


def write_scratch(directory: Path, size: int) -> float:
    """Write `size` bytes to a new file in `directory`, drop it; returns the seconds taken.

    The project's test machine is a VM whose kernel hands free memory back to its host
    (free page reporting, `page_reporting.page_reporting_order` on its command line, a
    couple of seconds after the pages are freed). The first write into such a page
    faults in the host: 1 GiB into a new file's page cache took 1.6-1.75 s of system
    time there, 0.21 s into pages just freed. Writing and dropping a file of the
    layer's size right before a pull leaves freed pages for containerd's ingest, as on
    a host whose memory stays its own."""
    path = directory / "scratch-prime"
    chunk = b"\0" * (8 * MIB)
    started = time.perf_counter()
    with open(path, "wb") as out:
        for _ in range(0, size, len(chunk)):
            out.write(chunk)
    path.unlink()
    return time.perf_counter() - started


@dataclass
class Puller:
    """One pull on the last node, timed, then its content removed; or one curl GET of the
    layer from its mirror."""

    cluster: LocalCluster
    image: GeneratedImage
    path: str
    prime: bool
    primes: list[float] = field(default_factory=list)

    @property
    def node(self) -> int:
        return len(self.cluster) - 1

    def __call__(self, trial: Trial[str, str]) -> PullRun:
        _set_width(self.cluster, self.node, 1 if trial.subject == ONE else 4, self.path)
        mirror = self.cluster[self.node].mirror
        containerd = self.cluster[self.node].containerd
        before = _striped_bodies(mirror.metrics_url)
        groups: dict[str, PidSource] = {
            "mirror": lambda: [mirror.process.pid or 0],
            "containerd": lambda: [containerd.pid or 0],
            "holders": lambda: [n.mirror.process.pid or 0 for n in self.cluster.nodes[:-1]],
        }
        started = time.perf_counter()
        with UsageMeter(groups) as meter:
            arrival, pull, transfer, idle = self._curl() if trial.scenario == CURL else self._pull()
        wall = time.perf_counter() - started
        striped = _striped_bodies(mirror.metrics_url) > before
        usage = meter.usage
        return PullRun(
            arrival,
            pull,
            transfer,
            idle,
            striped,
            usage.rss_max_mib("mirror"),
            usage.group_cpu_s["mirror"],
            usage.group_cpu_s["containerd"],
            usage.machine_busy_s / (wall * (os.cpu_count() or 1)),
            usage.group_cpu_s["holders"],
        )

    def _pull(self) -> tuple[float, float, float, float]:
        ref = self.image.ref(self.cluster.upstream.host)
        containerd = self.cluster[self.node].containerd
        if self.prime:
            self.primes.append(write_scratch(containerd.root, self.image.layers[0].size))
        with ArrivalWatch(containerd.content_path, self.image.layers[0].digest) as watch:
            started = time.perf_counter()
            result = self.cluster.pull(self.node, ref)
        self._check_and_remove(ref)
        if watch.arrived is None or watch.requested is None:
            raise KitError("the layer's request or arrival was not seen")
        sizes = [size for _, size in watch.growth]
        steps = list(itertools.pairwise(sizes))
        idle = sum(1 for a, b in steps if b <= a) / len(steps) if steps else 0.0
        return watch.arrived - started, result.duration, watch.arrived - watch.requested, idle

    def _curl(self) -> tuple[float, float, float, float]:
        url = self.cluster[self.node].mirror.url + self.path
        started = time.perf_counter()
        size = fetch_bytes(url)
        elapsed = time.perf_counter() - started
        if size != self.image.layers[0].size:
            raise KitError(f"curl read {size} bytes of the layer")
        return elapsed, elapsed, elapsed, 0.0

    def _check_and_remove(self, ref: str) -> None:
        containerd = self.cluster[self.node].containerd
        layer = self.image.layers[0].digest
        if not containerd.has_blob(layer):
            raise KitError(f"the pull did not commit {layer}")
        containerd.remove_image(ref)
        for blob in self.image.images[0].blobs():
            containerd.ctr("content", "rm", blob.digest, check=False)
        if containerd.has_blob(layer):
            raise KitError(f"{layer} is still in node {self.node + 1}'s content store")


class _Print(RunHooks[str, str, PullRun]):
    def __init__(self, size: int) -> None:
        self.size = size

    def round_started(self, round_: int) -> None:
        print(f"    round {round_ + 1}", flush=True)

    def measured(self, trial: Trial[str, str], result: PullRun) -> None:
        rate = self.size / result.arrival / MB
        print(
            f"      {trial.scenario:15} {trial.subject:10} layer in {result.arrival:6.2f} s"
            f" ({rate:4.0f} MB/s), transfer {result.transfer:6.2f} s"
            f" ({result.idle_share:.0%} of 100 ms idle), whole {result.pull:6.2f} s,"
            f" striped={result.striped},"
            f" mirror RSS {result.rss_mib:.0f} MiB, CPU {result.cpu_s:.1f} s,"
            f" containerd CPU {result.containerd_cpu_s:.1f} s,"
            f" holders CPU {result.holders_cpu_s:.1f} s, machine {result.machine_busy:.0%} busy",
            flush=True,
        )


def _setup(cluster: LocalCluster, layer_mib: int, holders: int) -> GeneratedImage:
    _step(f"generating an image of one {layer_mib} MiB layer")
    image = generate_image(
        cluster.base_dir / "layouts" / "huge",
        name="bench/huge",
        tag="v1",
        seed=31,
        total_size=layer_mib * MIB,
        layers=1,
    )
    ref = image.ref(cluster.upstream.host)
    push_image(image.layout_dir, image.tag, ref)
    _step(f"node-1 pulls it from the upstream, nodes 2-{holders} from the cluster")
    cluster.pull(0, ref, unpack=False)
    with concurrent.futures.ThreadPoolExecutor(holders) as pool:
        for pulled in [pool.submit(cluster.pull, i, ref, unpack=False) for i in range(1, holders)]:
            pulled.result()
    return image


def measure(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    rate = int(args.uplink_mb * MB)
    nodes = args.holders + 1
    _step(f"starting a {nodes}-node cluster, every node's peer uploads capped at {rate:,} B/s")
    mirror_args = [f"--peer-upload-rate={rate}"]
    with LocalCluster(
        nodes,
        base / "cluster",
        log_level="INFO",
        mirror_args=mirror_args,
        containerd_series=args.containerd,
    ) as cluster:
        image = _setup(cluster, args.layer_mib, args.holders)
        layer = image.layers[0]
        path = f"/v2/{image.name}/blobs/{layer.digest}?ns={cluster.upstream.host}"
        _wait_peer(cluster[nodes - 1].mirror.address, path, timeout=60)
        time.sleep(2.0)  # every holder's record reaches the DHT
        cluster.upstream.stop()  # every byte from the holders from now on
        puller = Puller(cluster, image, path, args.prime)
        _step("warm-up: one pull each (the holders prove their copy on its first read)")
        for subject in (STRIPED, ONE):
            puller(Trial(PULL, subject, -1))
        _step(f"{args.repeat} rounds: striped, then one holder; a containerd pull, then curl")
        outcome = run_trials(
            trial_matrix([PULL, CURL], lambda _: (STRIPED, ONE), args.repeat),
            puller,
            retry=RetryPolicy(pause_s=1.0),
            hooks=_Print(layer.size),
        )
        cluster.upstream.start()
    if any(r.striped != (t.subject == STRIPED) for t, r in outcome.kept):
        raise KitError("a striped run was not striped, or a one-holder run was")
    results: dict[str, Any] = {"layer_bytes": layer.size, "prime_s": puller.primes}
    for scenario in (PULL, CURL):
        runs = {
            subject: [r for t, r in outcome.kept if (t.scenario, t.subject) == (scenario, subject)]
            for subject in (STRIPED, ONE)
        }
        results[scenario] = {
            "arrival_s": {s: [r.arrival for r in rs] for s, rs in runs.items()},
            "whole_s": {s: [r.pull for r in rs] for s, rs in runs.items()},
            "transfer_s": {s: [r.transfer for r in rs] for s, rs in runs.items()},
            "idle_share": {s: [r.idle_share for r in rs] for s, rs in runs.items()},
            "mirror_rss_mib": {s: [r.rss_mib for r in rs] for s, rs in runs.items()},
            "mirror_cpu_s": {s: [r.cpu_s for r in rs] for s, rs in runs.items()},
            "containerd_cpu_s": {s: [r.containerd_cpu_s for r in rs] for s, rs in runs.items()},
            "holders_cpu_s": {s: [r.holders_cpu_s for r in rs] for s, rs in runs.items()},
            "machine_busy": {s: [r.machine_busy for r in rs] for s, rs in runs.items()},
            "speedup": paired_ratios(
                [r.arrival for r in runs[ONE]], [r.arrival for r in runs[STRIPED]]
            ),
            "whole_speedup": paired_ratios(
                [r.pull for r in runs[ONE]], [r.pull for r in runs[STRIPED]]
            ),
        }
    return results


def run(args: argparse.Namespace) -> int:
    base = Path(args.dir or tempfile.mkdtemp(prefix="bench-stripe-"))
    results: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "settings": vars(args) | {"out": str(args.out), "dir": str(args.dir)},
    }
    try:
        results |= measure(args, base)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    checks = [
        Check(
            f"{args.holders} capped holders vs one, {args.layer_mib} MiB layer, {scenario}",
            summarize(results[scenario]["speedup"]).median,
            ">=",
            TARGET,
        )
        for scenario in (PULL, CURL)
    ]
    results["checks"] = [check.as_dict() for check in checks]
    _print_table(results, args)
    for check in checks:
        print(check.line())
    write_json(args.out, results)
    print(f"results written to {args.out}")
    return 0


def _print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    size = results["layer_bytes"]
    print()
    print(
        f"{args.layer_mib} MiB layer, {args.holders} holders at {args.uplink_mb:g} MB/s each,"
        f" containerd {args.containerd}: median (min-max) of {args.repeat} runs; CPU seconds"
        " of the puller's mirror / its containerd / the holders, and the machine's share busy"
    )
    print()
    primes = results["prime_s"]
    if primes:
        print(
            f"before each containerd pull a scratch file of the layer's size was written and"
            f" dropped (--no-prime: not), in {summarize(primes).format(2)} s"
        )
    else:
        print("no scratch file before the pulls (--no-prime)")
    print()
    print(
        "| client | from | layer arrived, s | MB/s | whole pull, s"
        " | puller's mirror RSS, MiB | CPU s | machine busy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for scenario in (PULL, CURL):
        row = results[scenario]
        for subject in (STRIPED, ONE):
            arrival = summarize(row["arrival_s"][subject])
            rates = summarize([size / s / MB for s in row["arrival_s"][subject]])
            whole = summarize(row["whole_s"][subject]).format(2) if scenario == PULL else ""
            rss = max(row["mirror_rss_mib"][subject])
            cpu = " / ".join(
                f"{summarize(row[key][subject]).median:.1f}"
                for key in ("mirror_cpu_s", "containerd_cpu_s", "holders_cpu_s")
            )
            busy = summarize(row["machine_busy"][subject]).median
            label = f"striped (up to {args.holders})" if subject == STRIPED else "one holder"
            print(
                f"| {scenario} | {label} | {arrival.format(2)} | {rates.format()} | {whole}"
                f" | {rss:.0f} | {cpu} | {busy:.0%} |"
            )
        speedup = summarize(row["speedup"]).format(2)
        whole = summarize(row["whole_speedup"]).format(2) if scenario == PULL else ""
        print(f"| {scenario} | speedup (one / striped) | {speedup} | | {whole} | | | |")
    print()
