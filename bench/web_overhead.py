"""`python -m bench web_overhead`: what watching a node costs its hot path.

One node (containerd + `mirror registry`) serves a generated layer; `wrk`
measures its blob throughput alone, then while `/metrics` is scraped 10 times
a second and a debug page's websocket is open and reading the live feed (every
blob answer is one feed event). Runs alternate, plain and watched, and the
target is the median of the run-by-run ratios: watched / plain >= 0.95.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from bench.kit.containerd import ContainerdNode
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.mirror import MirrorNode
from bench.kit.registry import UpstreamRegistry
from bench.measure import MIB, Check, paired_ratios, summarize
from bench.runner import RunHooks, Trial, run_trials, trial_matrix
from bench.wrk import WRK_DONE_SCRIPT, parse_wrk, run_client, wrk_command

HOST = "127.0.0.1"
TARGET = 0.95
SCRAPES_PER_SECOND = 10
PLAIN, WATCHED = "plain", "watched"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blob-mib", type=int, default=256, help="layer size in MiB (256)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per condition (5)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per run (3)")
    parser.add_argument("--connections", type=int, default=1, help="wrk connections (1)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/web_overhead.json"))
    parser.add_argument("--dir", type=Path, default=None, help="working directory (temp)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


@dataclass
class Watchers:
    """A Prometheus-like scraper and a debug page's websocket, each in its own thread."""

    metrics_url: str
    scrapes: int = 0
    scrape_errors: int = 0
    messages: int = 0
    events: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _scrape(self) -> None:
        period = 1 / SCRAPES_PER_SECOND
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=5) as reply:
                    reply.read()
                self.scrapes += 1
            except OSError:
                self.scrape_errors += 1
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _page(self) -> None:
        url = self.metrics_url.replace("http://", "ws://") + "/debug/web/ws"

        async def follow() -> None:
            async with open_websocket_url(url) as ws:
                while not self._stop.is_set():
                    with trio.move_on_after(0.2):
                        message = json.loads(await ws.get_message())
                        self.messages += 1
                        self.events += len(message.get("events", []))

        with contextlib.suppress(ConnectionClosed):
            trio.run(follow)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        threads = [threading.Thread(target=self._scrape), threading.Thread(target=self._page)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=10)
            self._stop = threading.Event()


@dataclass
class Run:
    condition: str
    repeat: int
    mib_per_s: float
    scrapes: int = 0
    page_events: int = 0


def _wrk(url: str, duration: int, connections: int, script: Path) -> float:
    argv = wrk_command(
        url, threads=1, connections=connections, duration=duration, timeout_s=60, script=script
    )
    return parse_wrk(run_client(argv, timeout=120).output).mib_per_s


@dataclass(frozen=True)
class BlobRuns:
    """One wrk run of the blob URL: alone, or while the watchers are at work."""

    url: str
    watchers: Watchers
    duration: int
    connections: int
    script: Path

    def __call__(self, trial: Trial[str, str]) -> Run:
        if trial.subject == PLAIN:
            return Run(PLAIN, trial.round, self._wrk())
        scrapes, events = self.watchers.scrapes, self.watchers.events
        with self.watchers.running():
            time.sleep(0.3)  # the page is connected and the scraper ticking
            watched = self._wrk()
        return Run(
            WATCHED,
            trial.round,
            watched,
            self.watchers.scrapes - scrapes,
            self.watchers.events - events,
        )

    def _wrk(self) -> float:
        return _wrk(self.url, self.duration, self.connections, self.script)


class Progress(RunHooks[str, str, Run]):
    """One line per round, once its watched run is in."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.plain = 0.0

    def kept(self, trial: Trial[str, str], result: Run) -> None:
        if trial.subject == PLAIN:
            self.plain = result.mib_per_s
            return
        print(
            f"    [{trial.round + 1}/{self.rounds}] plain {self.plain:8,.0f} MiB/s   watched "
            f"{result.mib_per_s:8,.0f} MiB/s  ({result.scrapes} scrapes, "
            f"{result.page_events} events on the page)",
            flush=True,
        )


def _conditions(scenario: str) -> tuple[str, ...]:
    return (PLAIN, WATCHED)


@contextlib.contextmanager
def _node(base: Path, blob_mib: int) -> Iterator[tuple[MirrorNode, GeneratedImage, str]]:
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(UpstreamRegistry(base / "upstream", log_level="error"))
        containerd = stack.enter_context(ContainerdNode("node", base))
        image = generate_image(
            base / "layout", name="bench/web", tag="v1", seed=9, total_size=blob_mib * MIB, layers=1
        )
        ref = image.ref(upstream.host)
        push_image(image.layout_dir, image.tag, ref)
        write_hosts_toml(containerd.config_path, upstream.host, upstream.url)
        containerd.pull(ref, unpack=False)
        mirror = MirrorNode(
            host=HOST,
            containerd_sock=containerd.address,
            workdir=base / "mirror",
            log_level="WARN",
        )
        stack.enter_context(mirror)
        yield mirror, image, upstream.host


def _measure(base: Path, args: argparse.Namespace, script: Path) -> list[Run]:
    """A warm-up, then `repeat` rounds of plain and watched."""
    with _node(base, args.blob_mib) as (mirror, image, registry):
        url = f"{mirror.url}/v2/{image.name}/blobs/{image.layers[0].digest}?ns={registry}"
        measure = BlobRuns(
            url, Watchers(mirror.metrics_url), args.duration, args.connections, script
        )
        _wrk(url, 1, args.connections, script)  # warm-up, not recorded
        outcome = run_trials(
            trial_matrix(["blob"], _conditions, args.repeat), measure, hooks=Progress(args.repeat)
        )
    return outcome.results()


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)")
        return 2
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-web-"))
    script = base / "done.lua"
    base.mkdir(parents=True, exist_ok=True)
    script.write_text(WRK_DONE_SCRIPT)
    _step(f"one node serving a {args.blob_mib} MiB layer, in {base}")
    try:
        runs = _measure(base, args, script)
    finally:
        if args.dir is None:  # a temporary directory of our own
            shutil.rmtree(base, ignore_errors=True)
    plain_values = [r.mib_per_s for r in runs if r.condition == PLAIN]
    watched_values = [r.mib_per_s for r in runs if r.condition == WATCHED]
    ratio = summarize(paired_ratios(watched_values, plain_values))
    check = Check("blob throughput watched / plain", ratio.median, ">=", TARGET)
    _step(f"plain   {summarize(plain_values).format()} MiB/s")
    _step(f"watched {summarize(watched_values).format()} MiB/s")
    _step(f"ratio   {ratio.format(3)}")
    print(check.line())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "blob_mib": args.blob_mib,
                "duration_s": args.duration,
                "connections": args.connections,
                "scrapes_per_second": SCRAPES_PER_SECOND,
                "runs": [asdict(r) for r in runs],
                "ratio": asdict(ratio),
                "check": check.as_dict(),
            },
            indent=2,
        )
    )
    _step(f"results in {args.out}")
    return 1 if args.strict and not check.passed else 0
