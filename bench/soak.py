"""`python -m bench soak`: mixed hostile and honest load, phase after phase, on a
3-node local cluster; RSS, fds, event-loop lag and 5xx answers over time.

Node 1 holds an image; node 2 relays it from node 1 (a local miss each time).
Phases, each `--phase-seconds` of load then `--settle-seconds` of quiet:

- baseline: nothing (the reference every later phase returns to);
- peer-pulls: clients fetch every blob from node 2, relayed from node 1;
- manifest-flood: wrk on node 1's manifest by digest;
- idle-slow-clients: connections that never send, or send a CRLF now and then,
  and blob downloads that read 1 KiB a second, from several addresses, on both
  nodes' registry ports;
- record-flood: ADD_PROVIDER datagrams at node 1's router, from a member that
  holds the cluster key, bounded in count and rate.

Targets, per node and phase: RSS and fds back within 10% of the baseline once
the phase settled; zero 5xx; during the record flood, loop lag p99 at most 50 ms
and RSS under 128 MiB (the records stay stored for their TTL, 19 minutes: their
store's bound is what a 128 MiB pod must hold).
Results: `bench/results/soak.json` and a chart (`docs/img/soak.png`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.kit.cluster import LocalCluster
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.mirror import MirrorNode
from bench.machine import machine_info
from bench.measure import MIB
from bench.procstat import status_kib
from bench.result_file import write_json
from bench.soak_record_flood import RecordFlood
from bench.soak_report import PhaseReport, PhaseWindow, Sample, judge, parse_metrics
from bench.wrk import WRK_DONE_SCRIPT, run_client, wrk_command
from dht import load_cluster_key

SAMPLE_EVERY = 0.5
# Source addresses of the idle and slow clients: several, as real clients are.
CLIENT_HOSTS = [f"127.0.0.{n}" for n in range(20, 28)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phase-seconds", type=float, default=20.0, help="load per phase (20)")
    parser.add_argument("--settle-seconds", type=float, default=10.0, help="quiet after (10)")
    parser.add_argument("--image-mib", type=int, default=64, help="image size in MiB (64)")
    parser.add_argument("--idle-clients", type=int, default=1000, help="idle connections (1000)")
    parser.add_argument("--slow-clients", type=int, default=50, help="slow readers (50)")
    parser.add_argument(
        "--flood-records", type=int, default=200_000, help="ADD_PROVIDER datagrams at most"
    )
    parser.add_argument(
        "--flood-rate", type=int, default=20_000, help="datagrams per second at most"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    parser.add_argument("--chart", type=Path, default=Path("docs/img/soak.png"))
    parser.add_argument("--dir", type=Path, default=None, help="working directory (temp)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return bytes(reply.read())


@dataclass
class Sampler:
    """Every node's RSS, fds and `/metrics`, every SAMPLE_EVERY seconds, in a thread."""

    nodes: dict[str, MirrorNode]
    began: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        for name, node in self.nodes.items():
            pid = node.process.pid
            if pid is None:
                continue
            try:
                metrics = parse_metrics(_get(node.metrics_url + "/metrics").decode())
            except OSError:
                metrics = {}
            self.samples.append(
                Sample(
                    time.monotonic() - self.began,
                    name,
                    status_kib(pid, "VmRSS") / 1024,
                    _fds(pid),
                    metrics,
                )
            )

    def now(self) -> float:
        return time.monotonic() - self.began

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        def loop() -> None:
            while not self._stop.wait(SAMPLE_EVERY):
                self.sample()

        thread = threading.Thread(target=loop, name="soak-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(timeout=30)


class Load:
    """Background load: worker threads that run until `stop` is set."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors = 0
        self._threads: list[threading.Thread] = []

    def spawn(self, work: Callable[[], None], count: int = 1) -> None:
        for _ in range(count):
            thread = threading.Thread(target=self._guarded(work), daemon=True)
            thread.start()
            self._threads.append(thread)

    def once(self, work: Callable[[], None]) -> None:
        """`work` once, in a thread of its own (it watches `stop` itself, or ends)."""

        def run() -> None:
            try:
                work()
            except OSError:
                self.errors += 1

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _guarded(self, work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self.stop.is_set():
                try:
                    work()
                except OSError:
                    self.errors += 1
                    self.stop.wait(0.1)

        return run

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def _blob_urls(node: MirrorNode, image: GeneratedImage, registry: str) -> list[str]:
    digests = [b.digest for p in image.images for b in (p.config, *p.layers)]
    return [f"{node.url}/v2/{image.name}/blobs/{d}?ns={registry}" for d in digests]


def _peer_pulls(load: Load, urls: list[str]) -> None:
    def fetch_all() -> None:
        for url in urls:
            if load.stop.is_set():
                return
            _get(url, timeout=60)

    load.spawn(fetch_all, count=4)


def _manifest_flood(
    script: Path, node: MirrorNode, image: GeneratedImage, registry: str, seconds: float
) -> None:
    url = f"{node.url}/v2/{image.name}/manifests/{image.digest}?ns={registry}"
    argv = wrk_command(
        url,
        threads=1,
        connections=64,
        duration=max(int(seconds), 1),
        timeout_s=10,
        script=script,
    )
    run_client(argv, timeout=seconds + 60)


class HeldConnections:
    """Connections that hold a slot and send nothing useful: half of them idle, half
    sending a CRLF every 5 s (a CRLF never starts a request head)."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self, nodes: list[MirrorNode], count: int) -> None:
        for n in range(count):
            node = nodes[n % len(nodes)]
            sock = socket.socket()
            try:
                sock.bind((CLIENT_HOSTS[n % len(CLIENT_HOSTS)], 0))
                sock.settimeout(5)
                sock.connect((node.host, node.registry_port))
            except OSError:
                sock.close()
                continue
            with self._lock:
                self.socks.append(sock)

    def trickle(self, stop: threading.Event) -> None:
        while not stop.wait(5):
            with self._lock:
                socks = list(self.socks[1::2])
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"\r\n")

    def close(self) -> None:
        with self._lock:
            for sock in self.socks:
                sock.close()
            self.socks.clear()


def _slow_reader(url: str, stop: threading.Event) -> None:
    """A blob download read 1 KiB a second, until the phase ends or the node closes it."""
    host, _, path = url.removeprefix("http://").partition("/")
    ip, _, port = host.partition(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((CLIENT_HOSTS[threading.get_ident() % len(CLIENT_HOSTS)], 0))
    sock.settimeout(30)
    with sock:
        sock.connect((ip, int(port)))
        sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        while not stop.is_set():
            if not sock.recv(1024):
                return
            stop.wait(1.0)


def _idle_and_slow(
    load: Load, nodes: list[MirrorNode], blob_url: str, args: argparse.Namespace
) -> None:
    held = HeldConnections()

    def hold() -> None:
        held.open(nodes, args.idle_clients)
        held.trickle(load.stop)
        held.close()

    load.once(hold)
    load.spawn(lambda: _slow_reader(blob_url, load.stop), count=args.slow_clients)


@dataclass
class Soak:
    cluster: LocalCluster
    image: GeneratedImage
    registry: str
    args: argparse.Namespace
    wrk_script: Path
    sampler: Sampler
    windows: list[PhaseWindow] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    def phase(self, name: str, start_load: Callable[[Load], None] | None) -> None:
        args = self.args
        _step(f"{name}: {args.phase_seconds:.0f} s of load, then {args.settle_seconds:.0f} s quiet")
        start = self.sampler.now()
        load = Load()
        if start_load is not None:
            start_load(load)
        load.stop.wait(args.phase_seconds)
        load.finish()
        end = self.sampler.now()
        time.sleep(args.settle_seconds)
        self.windows.append(PhaseWindow(name, start, end, self.sampler.now()))
        if load.errors:
            self.notes[f"{name}: client errors"] = load.errors

    def run(self) -> None:
        holder, relay = self.cluster[0].mirror, self.cluster[1].mirror
        urls = _blob_urls(relay, self.image, self.registry)
        args = self.args
        self.phase("baseline", None)
        self.phase("peer-pulls", lambda load: _peer_pulls(load, urls))
        self.phase(
            "manifest-flood",
            lambda load: load.once(
                lambda: _manifest_flood(
                    self.wrk_script, holder, self.image, self.registry, args.phase_seconds
                )
            ),
        )
        slow_url = _blob_urls(holder, self.image, self.registry)[-1]
        self.phase(
            "idle-slow-clients", lambda load: _idle_and_slow(load, [holder, relay], slow_url, args)
        )
        assert self.cluster.router_key is not None  # LocalCluster's default: one shared key
        flood = RecordFlood(
            load_cluster_key(self.cluster.router_key),
            (holder.host, holder.router_port),
            sources=CLIENT_HOSTS,
            count=args.flood_records,
            rate=args.flood_rate,
        )
        self.phase(
            "record-flood",
            lambda load: load.once(lambda: flood.run(load.stop)),
        )
        self.notes["record-flood: datagrams sent"] = flood.sent
        # That the flood reached the store (authentic, fresh) and what held it back.
        last = [x for x in self.sampler.samples if x.node == self.cluster[0].name][-1]
        self.notes["record-flood: records stored on node-1"] = last.metrics.get(
            "mirror_dht_records_stored", -1.0
        )
        self.notes["record-flood: datagrams dropped on node-1"] = {
            name.split('"')[1]: value
            for name, value in last.metrics.items()
            if name.startswith("mirror_dht_datagrams_dropped_total{") and value
        }


def _setup(base: Path, args: argparse.Namespace) -> tuple[LocalCluster, GeneratedImage, str]:
    cluster = LocalCluster(
        3,
        base / "cluster",
        log_level="WARN",  # one cluster key, as deployed
    )
    cluster.start()
    image = generate_image(
        base / "layout",
        name="bench/soak",
        tag="v1",
        seed=11,
        total_size=args.image_mib * MIB,
        layers=4,
    )
    ref = image.ref(cluster.upstream.host)
    push_image(image.layout_dir, image.tag, ref)
    cluster.pull(0, ref)
    return cluster, image, cluster.upstream.host


def _reports(soak: Soak) -> list[PhaseReport]:
    reports = []
    by_node: dict[str, list[Sample]] = {}
    for sample in soak.sampler.samples:
        by_node.setdefault(sample.node, []).append(sample)
    baseline_window = soak.windows[0]
    for samples in by_node.values():
        settled = [s for s in samples if s.at <= baseline_window.settled]
        baseline = settled[-1]
        for window in soak.windows[1:]:
            reports.append(judge(window, samples, baseline, flood=window.name == "record-flood"))
    return reports


def _chart(soak: Soak, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no chart: matplotlib is in the bench extra: pip install -e '.[bench]')")
        return
    figure, (rss, fds) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for node in soak.sampler.nodes:
        samples = [s for s in soak.sampler.samples if s.node == node]
        rss.plot([s.at for s in samples], [s.rss_mib for s in samples], label=node)
        fds.plot([s.at for s in samples], [s.fds for s in samples], label=node)
    for axis in (rss, fds):
        for window in soak.windows:
            axis.axvspan(window.start, window.end, alpha=0.08)
            axis.text(window.start, 0, window.name, fontsize=7, rotation=90, va="bottom")
        axis.legend(loc="upper left")
    rss.set_ylabel("RSS (MiB)")
    fds.set_ylabel("open fds")
    fds.set_xlabel("seconds")
    figure.suptitle("bench soak: each phase's load (shaded), then quiet")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _print(reports: list[PhaseReport]) -> None:
    print(
        f"{'phase':<20}{'node':<10}{'RSS MiB start/peak/end':>26}"
        f"{'fds start/peak/end':>22}{'lag p99':>10}{'5xx':>6}"
    )
    for r in reports:
        rss = "/".join(f"{v:.0f}" for v in r.rss_mib)
        fds = "/".join(str(v) for v in r.fds)
        lag = f"{r.lag_p99_s * 1000:.0f} ms" if r.lag_p99_s != float("inf") else "> 2.5 s"
        print(f"{r.phase:<20}{r.node:<10}{rss:>26}{fds:>22}{lag:>10}{r.server_errors:>6}")
        for check, ok in r.checks:
            if not ok:
                print(f"    FAIL {check}")


def run(args: argparse.Namespace) -> int:
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    _step(f"a 3-node cluster with a {args.image_mib} MiB image on node 1, in {base}")
    cluster, image, registry = _setup(base, args)
    try:
        nodes = {node.name: node.mirror for node in cluster.nodes[:2]}
        sampler = Sampler(nodes)
        script = base / "done.lua"
        script.write_text(WRK_DONE_SCRIPT)
        soak = Soak(cluster, image, registry, args, script, sampler)
        with sampler.running():
            soak.run()
    finally:
        cluster.stop()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    reports = _reports(soak)
    _print(reports)
    passed = all(r.passed for r in reports)
    write_json(
        args.out,
        {
            "machine": machine_info(),
            "settings": {k: str(v) for k, v in vars(args).items()},
            "phases": [w.__dict__ for w in soak.windows],
            "reports": [r.as_dict() for r in reports],
            "notes": soak.notes,
            "samples": [
                {"at": s.at, "node": s.node, "rss_mib": s.rss_mib, "fds": s.fds}
                for s in sampler.samples
            ],
            "passed": passed,
        },
    )
    _chart(soak, args.chart)
    _step(f"results in {args.out}, chart in {args.chart}")
    _step("every target met" if passed else "some targets missed (FAIL lines above)")
    return 1 if args.strict and not passed else 0
