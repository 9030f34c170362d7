"""`python -m bench coldstart-sim`: a new image reaching thousands of nodes at once, simulated.

The decisions are the product's own pure cores: the claim table (`dht/claims.py`)
as the arbiter, `ColdMiss` (claim, search, back off, give up) and
`usable_source` (`mirror/mirroring/coldmiss.py`), the per-node stream cap and
the streams it ends to make room (`mirror/server/streamcap.py`), and which
download a node passes on (`mirror/mirroring/forwarding.py`). What they decide
runs in a fluid model of the network, stepped every `dt`: each node has an
uplink and a downlink, shared equally by its transfers; the upstream is one
shared link; a node can relay no byte it has not received yet. Lookups see a
download in progress once its first byte is `announce_delay` old. Each node
fetches `parallel` layers at a time in manifest order, as containerd does
(`images.Dispatch` takes its limiter before it starts each child): every node
asks for the same layers first. A layer of the striping threshold or more is
fetched from up to `stripe_width` complete holders at once, as the mirror's
striper does (`StripeSettings`): the first with room, the others only while
they stream nothing else, let go as soon as another peer asks them (a stripe's
range takes spare uplink only); each holder's share is one of its streams.

The product's rules, each of which can be turned off to see what it is worth:
a node fetching a blob it claimed searches before claiming another
(`--no-one-claim`); a node still receiving passes one download on to peers,
and a full node makes room for a puller that will pass it on by ending a
stream to one that will not (`--no-forward-one`). What-if rules the product
does not have, to weigh one before building it: `--preempt` (a node at its
stream cap, asked for a blob it streams to nobody, ends its newest stream of a
blob it streams twice or more; that puller resumes from another source),
`--max-pause` (the longest pause between a waiting fetch's searches) and
`--order random` (each node fetches the layers in its own order).

Reported: time to distribute the image (p50, p99, max, from each node's start),
upstream fetches per layer, the busiest node's share of the bytes nodes sent
each other, and the comparison with Kraken's published figure (a 3 GB image to
2,600 hosts at 300 MB/s per agent: p50 10 s, p99 18 s). The model leaves out
CPU, disks, TCP dynamics and failures; the real cluster tests cover those.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dht import Provider
from dht.claims import MAX_LEASE, ClaimTable, Lost
from mirror.mirroring.coldmiss import (
    ClaimIt,
    ColdMiss,
    ColdMissLimits,
    GiveUp,
    Pause,
    usable_source,
)
from mirror.mirroring.forwarding import forwarded
from mirror.mirroring.striper import StripeSettings
from mirror.server.streamcap import StreamCap

MB = 1_000_000
UPSTREAM = -1  # a transfer's source when it comes from the upstream
KRAKEN = {"nodes": 2600, "image_gb": 3, "rate_mb_s": 300, "p50_s": 10.0, "p99_s": 18.0}


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 1000
    layers: int = 4
    layer_size: float = 750 * MB
    uplink: float = 300 * MB
    downlink: float = 300 * MB
    upstream: float = 1250 * MB
    peer_streams: int = 3
    parallel: int = 3
    stagger: float = 0.0
    announce_delay: float = 0.05
    lease: float = 5.0
    dt: float = 0.02
    seed: int = 1
    time_limit: float = 600.0
    stripe_width: int = StripeSettings().width  # 1: one source per layer
    stripe_threshold: float = StripeSettings().threshold
    # The product's rules (off: what they are worth).
    # one_claim: a node ingesting a claimed blob from the upstream searches before
    # it claims another (others become the other blobs' claimants).
    one_claim: bool = True
    # forward_one: a node streams to peers, while it still receives them, only the
    # layers `forwarding.forwarded` names; a full node asked for a layer by a puller
    # that forwards it ends its newest stream of that layer to a puller that does
    # not (who resumes elsewhere). Each layer's tree grows through nodes that pass it on.
    forward_one: bool = True
    # What-if: rules the product does not have, to weigh them before building.
    # preempt: a full node asked for a blob it streams to nobody ends its newest
    # stream of a blob it streams twice or more; that puller resumes elsewhere.
    preempt: bool = False
    max_pause: float = ColdMissLimits().max_pause  # between a waiting fetch's searches
    # "manifest": every node fetches the layers in the manifest's order (containerd);
    # "random": each node in its own order.
    order: str = "manifest"

    @property
    def image_size(self) -> float:
        return self.layers * self.layer_size


@dataclass(eq=False)
class _Fetch:
    node: int
    layer: int
    core: ColdMiss | None = None
    source: int | None = None
    got: float = 0.0
    wake: float = 0.0
    holder: Provider | None = None
    claimed: bool = False
    # A striped fetch's other complete holders, each one stream of its uplink.
    extra: list[int] = field(default_factory=list)

    @property
    def sources(self) -> list[int]:
        return [] if self.source is None else [self.source, *self.extra]


@dataclass
class SimResult:
    config: SimConfig
    times: list[float]
    upstream_fetches: dict[int, int]
    busiest_share: float
    peer_bytes: float
    unfinished: int
    wall_seconds: float
    claims: Counter[str] = field(default_factory=Counter)
    claimants: dict[int, int] = field(default_factory=dict)  # layer -> node that won it
    preempted: int = 0  # streams ended by --preempt
    leaves_ended: int = 0  # streams ended for a puller that passes the layer on

    def percentile(self, q: float) -> float:
        if not self.times:
            return math.inf
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    @property
    def ideal(self) -> float:
        """The image at one node's downlink: no scheme beats it."""
        return self.config.image_size / self.config.downlink

    def summary(self) -> dict[str, object]:
        fetches = list(self.upstream_fetches.values())
        return {
            "config": asdict(self.config),
            "p50_s": round(self.percentile(0.5), 2),
            "p99_s": round(self.percentile(0.99), 2),
            "max_s": round(max(self.times, default=math.inf), 2),
            "ideal_s": round(self.ideal, 2),
            "p50_over_ideal": round(self.percentile(0.5) / self.ideal, 2),
            "upstream_fetches_per_layer_max": max(fetches, default=0),
            "upstream_fetches_per_layer_mean": round(statistics.fmean(fetches), 2)
            if fetches
            else 0,
            "busiest_node_share": round(self.busiest_share, 4),
            "unfinished": self.unfinished,
            "claims": dict(self.claims),
            "preempted": self.preempted,
            "leaves_ended": self.leaves_ended,
            "wall_seconds": round(self.wall_seconds, 1),
        }


class ColdStartSim:
    def __init__(self, config: SimConfig) -> None:
        self.c = config
        rng = random.Random(config.seed)
        n = config.nodes
        self.providers = [
            Provider(
                i.to_bytes(4, "big").rjust(20, b"\0"), f"10.0.{i // 250}.{i % 250}", 5001, 5000
            )
            for i in range(n)
        ]
        self.start = [rng.uniform(0, config.stagger) for _ in range(n)]
        self.caps = [StreamCap(config.peer_streams) for _ in range(n)]
        self.claims = ClaimTable()
        self.keys = [f"sha256:{layer:064x}".encode() for layer in range(config.layers)]
        # Per layer: nodes holding it whole, and nodes receiving it (-> first-byte time).
        self.complete: list[list[int]] = [[] for _ in range(config.layers)]
        self.complete_set: list[set[int]] = [set() for _ in range(config.layers)]
        self.receiving: list[dict[int, float]] = [{} for _ in range(config.layers)]
        self.progress: list[dict[int, float]] = [{} for _ in range(config.layers)]
        if config.order == "random":
            self.pending = [rng.sample(range(config.layers), config.layers) for _ in range(n)]
        else:  # pop() takes the last: layer 0 first
            self.pending = [list(reversed(range(config.layers))) for _ in range(n)]
        self.digests = [key.decode() for key in self.keys]
        self.layer_of = {digest: layer for layer, digest in enumerate(self.digests)}
        # forward_one: node -> (its fetches, the layer it forwards), as last worked out.
        self._forwarding: dict[int, tuple[tuple[tuple[int, bool], ...], frozenset[int]]] = {}
        self.serving: list[list[_Fetch]] = [[] for _ in range(n)]  # node -> streams it sends
        self.active: list[list[_Fetch]] = [[] for _ in range(n)]
        self.done_at: list[float | None] = [None] * n
        self.uploaded = [0.0] * n
        self.up_streams = [0] * n
        self.upstream_fetches: Counter[int] = Counter()
        self.claim_outcomes: Counter[str] = Counter()
        self.transfers: list[_Fetch] = []
        self.waiting: list[_Fetch] = []
        self.rng = rng
        self.limits = ColdMissLimits(wait_budget=config.time_limit, max_pause=config.max_pause)
        self.ingesting: Counter[int] = Counter()  # node -> claimed upstream fetches running
        self.requeue: list[_Fetch] = []  # preempted fetches, waiting again next step
        self.preempted = 0
        self.leaves_ended = 0
        self.claimants: dict[int, int] = {}
        self.now = 0.0

    # -- decisions (the product's cores) ----------------------------------------

    def _try_sources(self, f: _Fetch, now: float) -> str:
        """Start a transfer from a source with room, complete holders first (from a
        random one on), then the download in progress furthest along: "started",
        "busy" (sources exist, none with room) or "none"."""
        layer, key = f.layer, str(f.layer)
        complete = self.complete[layer]
        taken = self._complete_holders(f)
        if taken:
            f.extra = taken[1:]
            self._begin(f, taken[0], now)
            return "started"
        any_found = bool(complete)
        total = int(self.c.layer_size)
        best, best_got = -1, -1.0
        holder = f.holder
        holder_index = int.from_bytes(holder.node_id[-4:], "big") if holder is not None else -1
        for node, first_byte in self.receiving[layer].items():
            if node == f.node or not self._forwards(node, layer):
                continue
            visible = now - first_byte >= self.c.announce_delay or node == holder_index
            if not visible:
                continue
            got = self.progress[layer][node]
            provider = Provider(self.providers[node].node_id, "", 0, 0, progress=(int(got), total))
            if not usable_source(provider, int(f.got), holder):
                continue
            any_found = True
            if got > best_got and self._has_room(node, key, f):
                best, best_got = node, got
        if best >= 0 and self._acquire(best, key, now, f):
            self._begin(f, best, now)
            return "started"
        return "busy" if any_found else "none"

    def _complete_holders(self, f: _Fetch) -> list[int]:
        """Complete holders with room, from a random one on, each taking a stream: one,
        or up to `stripe_width` for a layer the mirror stripes."""
        complete, key = self.complete[f.layer], str(f.layer)
        width = self.c.stripe_width if self.c.layer_size >= self.c.stripe_threshold else 1
        taken: list[int] = []
        first = self.rng.randrange(len(complete)) if complete else 0
        for i in range(len(complete)):
            node = complete[(first + i) % len(complete)]
            if taken and len(self.caps[node]) > 0:
                continue  # a stripe's other holders lend spare uplink only (registry.py)
            if self._acquire(node, key, self.now, f):
                taken.append(node)
                if len(taken) == width:
                    break
        return taken

    def _forwarded(self, node: int) -> frozenset[int]:
        """With `forward_one`: the layers `node` streams to peers while it still
        receives them (`forwarding.forwarded` over its fetches)."""
        fetches = tuple((f.layer, f.claimed and f.source == UPSTREAM) for f in self.active[node])
        known = self._forwarding.get(node)
        if known is not None and known[0] == fetches:
            return known[1]
        digests = forwarded(
            self.providers[node].node_id,
            (self.digests[layer] for layer, _ in fetches),
            (self.digests[layer] for layer, claimed in fetches if claimed),
        )
        layers = frozenset(self.layer_of[digest] for digest in digests)
        self._forwarding[node] = (fetches, layers)
        return layers

    def _forwards(self, node: int, layer: int) -> bool:
        return (
            not self.c.forward_one
            or node in self.complete_set[layer]
            or layer in self._forwarded(node)
        )

    def _preemptible(self, node: int, key: str, puller: _Fetch) -> _Fetch | None:
        """The stream a full `node` would end to serve `puller` under the what-if rules:
        with `forward_one`, its newest of that layer to a puller that does not forward
        it, when this puller does; with `preempt`, for a layer it streams to nobody,
        its newest of the layer it streams most, if that is 2 or more."""
        cap = self.caps[node]
        if not cap.full:
            return None
        if self.c.forward_one and puller.layer in self._forwarded(puller.node):
            leaf = cap.leaf_to_end(key)
            if isinstance(leaf, _Fetch):
                return leaf
        if not self.c.preempt or cap.streams(key) > 0:
            return None
        top = max(range(self.c.layers), key=lambda layer: cap.streams(str(layer)))
        if cap.streams(str(top)) < 2:
            return None
        victims = [g for g in self.serving[node] if g.layer == top]
        return min(victims, key=lambda g: g.got) if victims else None

    def _has_room(self, node: int, key: str, puller: _Fetch) -> bool:
        return not self.caps[node].full or self._preemptible(node, key, puller) is not None

    def _acquire(self, node: int, key: str, now: float, puller: _Fetch) -> bool:
        victim = self._preemptible(node, key, puller)
        if victim is not None:
            if victim is self.caps[node].leaf_to_end(key):
                self.leaves_ended += 1
            else:
                self.preempted += 1
            self._detach(victim, now)
        return self.caps[node].acquire(key)

    def _detach(self, f: _Fetch, now: float) -> None:
        """A preempted stream: its puller searches again from the bytes it has (the
        relay's resume with `Range`)."""
        self.transfers.remove(f)
        self._release_sources(f)
        f.source, f.extra = None, []
        f.core, f.wake = ColdMiss(now, self.limits, busy=True), now
        self.requeue.append(f)

    def _release_sources(self, f: _Fetch) -> None:
        """The streams a transfer from peers held at its sources, given back."""
        assert f.source is not None
        self.serving[f.source].remove(f)
        self.caps[f.source].leaf_ended(str(f.layer), f)
        for node in f.sources:
            self.up_streams[node] -= 1
            self.caps[node].release(str(f.layer))

    def _begin(self, f: _Fetch, source: int, now: float) -> None:
        f.source = source
        if source != UPSTREAM:
            self.serving[source].append(f)
            if self.c.forward_one and f.layer not in self._forwarded(f.node):
                self.caps[source].leaf_started(str(f.layer), f)
            for node in f.sources:
                self.up_streams[node] += 1
        self.transfers.append(f)
        self.receiving[f.layer].setdefault(f.node, math.inf)
        self.progress[f.layer].setdefault(f.node, 0.0)

    def _advance_waiting(self, f: _Fetch, now: float) -> bool:
        """Drive one waiting fetch's ColdMiss; True when it is no longer waiting."""
        if f.core is None:
            outcome = self._try_sources(f, now)
            if outcome == "started":
                return True
            busy = outcome == "busy" or (self.c.one_claim and self.ingesting[f.node] > 0)
            f.core = ColdMiss(now, self.limits, busy=busy)
        core = f.core
        while True:
            step = core.next_step(now)
            if isinstance(step, GiveUp):
                self.claim_outcomes[step.reason] += 1
                if step.won:
                    self.claimants.setdefault(f.layer, f.node)
                self.upstream_fetches[f.layer] += 1
                f.claimed = step.won
                self.ingesting[f.node] += step.won
                self._begin(f, UPSTREAM, now)
                return True
            if isinstance(step, Pause):
                f.wake = step.until
                return False
            if isinstance(step, ClaimIt):
                answer = self.claims.claim(
                    self.keys[f.layer], self.providers[f.node], now, self.c.lease
                )
                if isinstance(answer, Lost):
                    f.holder = answer.claim.holder
                    self.claim_outcomes["lost"] += 1
                core.claimed(answer, now)
                continue
            outcome = self._try_sources(f, now)
            if outcome == "started":
                return True
            core.search_failed(now, busy=outcome == "busy")

    # -- the fluid network -----------------------------------------------------------

    def _start_next(self, node: int, now: float) -> None:
        while self.pending[node] and len(self.active[node]) < self.c.parallel:
            f = _Fetch(node, self.pending[node].pop())
            self.active[node].append(f)
            self.waiting.append(f)

    def _yield_stripes(self) -> None:
        """A stripe's other holder that now streams to another peer too refuses the
        stripe's next range (1 MiB, at once in this model): the stripe lets it go."""
        for f in self.transfers:
            if not f.extra:
                continue
            kept = []
            for node in f.extra:
                if len(self.caps[node]) > 1:
                    self.up_streams[node] -= 1
                    self.caps[node].release(str(f.layer))
                else:
                    kept.append(node)
            f.extra = kept

    def _move_bytes(self, now: float) -> None:
        c, dt = self.c, self.c.dt
        down_streams: Counter[int] = Counter()
        for f in self.transfers:
            down_streams[f.node] += len(f.sources)
        upstream_share = c.upstream / max(1, sum(1 for f in self.transfers if f.source == UPSTREAM))
        finished = []
        for f in self.transfers:
            per_stream = c.downlink / down_streams[f.node]
            shares: list[float] = []
            if f.source == UPSTREAM:
                rate = min(per_stream, upstream_share)
                limit = c.layer_size
            else:
                assert f.source is not None
                shares = [min(per_stream, c.uplink / self.up_streams[n]) for n in f.sources]
                rate = sum(shares)
                limit = (
                    c.layer_size
                    if f.source in self.complete_set[f.layer]
                    else self.progress[f.layer][f.source]
                )
            moved = max(0.0, min(rate * dt, limit - f.got, c.layer_size - f.got))
            if moved <= 0:
                continue
            if f.got == 0:
                self.receiving[f.layer][f.node] = now
            f.got += moved
            self.progress[f.layer][f.node] = f.got
            # Each holder sent its share (none are from the upstream: no shares).
            for node, share in zip(f.sources, shares, strict=False):
                self.uploaded[node] += moved * share / rate
            if f.got >= c.layer_size:
                finished.append(f)
            elif f.claimed and f.source == UPSTREAM:
                self.claims.claim(self.keys[f.layer], self.providers[f.node], now, c.lease)
        for f in finished:
            self._finish(f, now)

    def _finish(self, f: _Fetch, now: float) -> None:
        self.transfers.remove(f)
        if f.source != UPSTREAM:
            self._release_sources(f)
        self.receiving[f.layer].pop(f.node, None)
        if f.claimed and f.source == UPSTREAM:
            self.ingesting[f.node] -= 1
        self.complete[f.layer].append(f.node)
        self.complete_set[f.layer].add(f.node)
        if f.claimed:  # as the announcer does on commit: the longest lease, not a release
            self.claims.claim(self.keys[f.layer], self.providers[f.node], now, MAX_LEASE)
        node = f.node
        self.active[node].remove(f)
        self._start_next(node, now)
        if not self.active[node] and not self.pending[node]:
            self.done_at[node] = now

    def run(self) -> SimResult:
        wall = time.monotonic()
        c = self.c
        order = sorted(range(c.nodes), key=lambda i: self.start[i])
        next_start = 0
        now = 0.0
        while now < c.time_limit:
            self.now = now
            while next_start < len(order) and self.start[order[next_start]] <= now:
                self._start_next(order[next_start], now)
                next_start += 1
            still = []
            for f in self.waiting:
                if f.wake > now or not self._advance_waiting(f, now):
                    still.append(f)
            self.waiting = still + self.requeue
            self.requeue = []
            self._yield_stripes()
            self._move_bytes(now)
            if next_start == len(order) and all(d is not None for d in self.done_at):
                break
            now += c.dt
        times = [d - self.start[i] for i, d in enumerate(self.done_at) if d is not None]
        peer_bytes = sum(self.uploaded)
        return SimResult(
            config=c,
            times=times,
            upstream_fetches={layer: self.upstream_fetches[layer] for layer in range(c.layers)},
            busiest_share=max(self.uploaded) / peer_bytes if peer_bytes else 0.0,
            peer_bytes=peer_bytes,
            unfinished=sum(1 for d in self.done_at if d is None),
            wall_seconds=time.monotonic() - wall,
            claims=self.claim_outcomes,
            claimants=self.claimants,
            preempted=self.preempted,
            leaves_ended=self.leaves_ended,
        )


def simulate(config: SimConfig) -> SimResult:
    return ColdStartSim(config).run()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 2600, 5000])
    parser.add_argument("--image-gb", type=float, default=3.0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=300.0, help="per-node up/down, MB/s")
    parser.add_argument("--upstream", type=float, default=1250.0, help="shared upstream, MB/s")
    parser.add_argument(
        "--peer-streams", type=int, default=3, help="per-node stream cap (the mirror's flag)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=3,
        help="layers a node fetches at once: containerd's max_concurrent_downloads "
        "(the CRI's default 3)",
    )
    parser.add_argument("--stagger", type=float, default=0.0, help="starts spread over s")
    parser.add_argument("--dt", type=float, default=0.02)
    parser.add_argument(
        "--preempt",
        action="store_true",
        help="what-if: a full node ends a stream of a blob it streams twice for one it "
        "streams to nobody",
    )
    parser.add_argument(
        "--no-one-claim",
        dest="one_claim",
        action="store_false",
        help="without the product's rule: a node ingesting a claimed blob searches before "
        "claiming another",
    )
    parser.add_argument(
        "--max-pause",
        type=float,
        default=ColdMissLimits().max_pause,
        help="ColdMissLimits.max_pause: longest pause between searches of a waiting fetch",
    )
    parser.add_argument(
        "--no-forward-one",
        dest="forward_one",
        action="store_false",
        help="without the product's rule: a node still receiving passes one download on, "
        "and makes room for a puller that passes it on too",
    )
    parser.add_argument(
        "--order",
        choices=("manifest", "random"),
        default="manifest",
        help="the order each node fetches the layers in (manifest: containerd's)",
    )
    parser.add_argument(
        "--stripe-width",
        type=int,
        default=StripeSettings().width,
        help="complete holders a huge layer is fetched from at once (1: one source)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/coldstart-sim.json"))


def run(args: argparse.Namespace) -> int:
    results = []
    for nodes in args.nodes:
        config = SimConfig(
            nodes=nodes,
            layers=args.layers,
            layer_size=args.image_gb * 1000 * MB / args.layers,
            uplink=args.rate * MB,
            downlink=args.rate * MB,
            upstream=args.upstream * MB,
            peer_streams=args.peer_streams,
            parallel=args.parallel,
            stagger=args.stagger,
            dt=args.dt,
            stripe_width=args.stripe_width,
            preempt=args.preempt,
            one_claim=args.one_claim,
            max_pause=args.max_pause,
            forward_one=args.forward_one,
            order=args.order,
        )
        result = simulate(config)
        summary = result.summary()
        results.append(summary)
        print(
            f"{nodes:>5} nodes: p50 {summary['p50_s']}s  p99 {summary['p99_s']}s  "
            f"max {summary['max_s']}s  (ideal {summary['ideal_s']}s, p50 "
            f"{summary['p50_over_ideal']}x)  upstream fetches/layer "
            f"{summary['upstream_fetches_per_layer_max']}  busiest node "
            f"{float(str(summary['busiest_node_share'])) * 100:.2f}% of peer bytes  "
            f"[{summary['wall_seconds']}s]",
            flush=True,
        )
    print(
        f"Kraken (published): {KRAKEN['image_gb']} GB to {KRAKEN['nodes']} hosts at "
        f"{KRAKEN['rate_mb_s']} MB/s: p50 {KRAKEN['p50_s']}s, p99 {KRAKEN['p99_s']}s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"kraken": KRAKEN, "runs": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
