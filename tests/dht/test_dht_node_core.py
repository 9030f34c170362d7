"""The node core on fake time: no sockets, no Trio; datagrams are passed by hand
or by a simulated network of cores."""

from __future__ import annotations

import heapq
import math
import random

import dht.messages as messages
from dht.announce import Plan, group_keys
from dht.config import NodeConfig
from dht.core import FetchPeers, NodeCore, Ready, Send, WakeAt
from dht.ids import ID_BITS, bucket_index, id_to_int, key_id
from dht.lookup import State
from dht.messages import (
    MAX_KEYS_PER_ADD,
    Contact,
    Envelope,
    FindNode,
    Nodes,
    Pong,
    Provider,
    decode,
    encode,
)
from dht.operations import LookupOp

Address = tuple[str, int]
OWN = bytes(16)


def config(**changes: object) -> NodeConfig:
    return NodeConfig(bind_host="127.0.0.1", bind_port=5001, **changes)  # type: ignore[arg-type]


def lone_core(**changes: object) -> NodeCore:
    core = NodeCore(config(**changes), OWN, ("127.0.0.1", 5001), 0.0, rng=random.Random(7))
    core.take_commands()
    return core


def sends(core: NodeCore) -> list[Send]:
    return [c for c in core.take_commands() if isinstance(c, Send)]


def answer(
    core: NodeCore, request: Send, sender: bytes, message: messages.Message, now: float
) -> None:
    rid = decode(request.data).request_id
    core.receive(
        encode(Envelope(rid, sender, message)), request.address[0], request.address[1], now
    )


def far_contacts(rng: random.Random, n: int) -> list[Contact]:
    """Contacts in our farthest bucket (their top bit differs from OWN's)."""
    return [
        Contact(bytes([0x80 | rng.randrange(128)]) + rng.randbytes(15), f"127.0.1.{i + 1}", 5001)
        for i in range(n)
    ]


def test_a_request_times_out_and_a_late_reply_still_proves_the_peer_alive() -> None:
    core = lone_core(request_timeout=0.5)
    peer = Contact(bytes([0x80]) * 16, "127.0.0.2", 5001)
    op = core.ping((peer.host, peer.port), 0.0)
    [request] = sends(core)
    core.tick(0.49)
    assert not op.done
    core.tick(0.5)
    assert op.done and not op.answered
    assert core.table.counters.timeouts == 1
    answer(core, request, peer.node_id, Pong("127.0.0.1", 5001), 0.7)
    assert core.table.counters.late_replies == 1
    assert peer.node_id in core.routing
    answer(core, request, peer.node_id, Pong("127.0.0.1", 5001), 0.8)  # once only
    assert core.counters.dropped_unsolicited == 1


def test_a_stalled_request_frees_its_slot_and_its_late_reply_counts() -> None:
    rng = random.Random(1)
    core = lone_core(alpha=3, stall_timeout=0.05, request_timeout=0.5)
    contacts = far_contacts(rng, 6)
    for c in contacts:
        core.routing.observe(c, 0.0)
    op = core.find_node(bytes([0xFF]) * 16, 0.0)
    first = sends(core)
    assert len(first) == 3  # alpha
    core.tick(0.05)  # all three stall: their slots go to the next three
    second = sends(core)
    assert len(second) == 3
    assert not {s.address for s in first} & {s.address for s in second}
    by_address = {(c.host, c.port): c for c in contacts}
    slow = by_address[first[0].address]
    assert op.lookup.state(slow.node_id) is State.STALLED
    answer(core, first[0], slow.node_id, Nodes(()), 0.2)
    assert op.lookup.state(slow.node_id) is State.SUCCEEDED
    for request in second:
        answer(core, request, by_address[request.address].node_id, Nodes(()), 0.21)
    assert op.done
    # The two left stalled count as failures, the one that answered does not.
    assert slow.node_id in core.routing


def test_a_dead_contact_is_replaced_from_the_cache() -> None:
    rng = random.Random(2)
    core = lone_core(k=2, request_timeout=0.5, stall_timeout=0.05)
    a, b, c = far_contacts(rng, 3)
    for x in (a, b, c):
        core.routing.observe(x, 0.0)
    assert c.node_id not in core.routing  # waiting in the replacement cache
    op = core.find_node(a.node_id, 0.0)
    requests = {s.address: s for s in sends(core)}
    answer(core, requests[(b.host, b.port)], b.node_id, Nodes(()), 0.01)
    core.tick(0.5)  # a never answers
    assert op.done
    assert a.node_id not in core.routing
    assert {x.node_id for x in core.routing.contacts()} == {b.node_id, c.node_id}


def test_a_contact_without_replacement_is_evicted_after_repeated_failures() -> None:
    rng = random.Random(3)
    core = lone_core(request_timeout=0.5)
    [a] = far_contacts(rng, 1)
    core.routing.observe(a, 0.0)
    now = 0.0
    for _ in range(2):
        core.ping((a.host, a.port), now, a)
        now += 0.5
        core.tick(now)
        assert a.node_id in core.routing  # flagged, kept through a short outage
    core.take_commands()
    core.ping((a.host, a.port), now, a)
    core.tick(now + 0.5)
    assert a.node_id not in core.routing
    assert not core.ready()
    commands = core.take_commands()
    assert Ready(False) in commands


class SimNet:
    """Cores exchanging datagrams with a fixed latency, on one fake clock."""

    def __init__(self, n: int, seed: int = 1, latency: float = 0.001, **changes: object) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self.cores: dict[Address, NodeCore] = {}
        self.wake: dict[Address, float] = {}
        self.dead: set[Address] = set()
        # Extra delay of every datagram to these nodes (overloaded, not dead).
        self.slow: dict[Address, float] = {}
        self._queue: list[tuple[float, int, Address, Address, bytes]] = []
        self._seq = 0
        self.seed_address: Address = ("127.0.2.1", 5001)
        self.sent: list[tuple[Address, Send]] | None = None  # every datagram, when a list
        for i in range(n):
            address = (f"127.0.2.{i + 1}", 5001)
            node_config = NodeConfig(
                bind_host=address[0],
                bind_port=5001,
                **changes,  # type: ignore[arg-type]
            )
            core = NodeCore(
                node_config,
                self.rng.randbytes(16),
                address,
                self.now,
                rng=random.Random(seed * 1000 + i),
            )
            self.cores[address] = core
            self.pump(address)

    def pump(self, address: Address) -> None:
        core = self.cores[address]
        while commands := core.take_commands():
            for command in commands:
                if isinstance(command, Send):
                    if self.sent is not None:
                        self.sent.append((address, command))
                    self._seq += 1
                    item = (
                        self.now + self.latency + self.slow.get(command.address, 0.0),
                        self._seq,
                        command.address,
                        address,
                        command.data,
                    )
                    heapq.heappush(self._queue, item)
                elif isinstance(command, WakeAt):
                    self.wake[address] = command.when
                elif isinstance(command, FetchPeers):
                    core.bootstrap([self.seed_address], self.now)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            live_wakes = [w for a, w in self.wake.items() if a not in self.dead]
            following = min([*live_wakes, self._queue[0][0] if self._queue else math.inf])
            if following > end:
                break
            self.now = max(self.now, following)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, to, source, data = heapq.heappop(self._queue)
                if to in self.cores and to not in self.dead:
                    self.cores[to].receive(data, source[0], source[1], self.now)
                    self.pump(to)
            for address, when in list(self.wake.items()):
                if when <= self.now and address not in self.dead:
                    self.cores[address].tick(self.now)
                    self.pump(address)
        self.now = end

    def providers(self, core: NodeCore, key: str, limit: int = 20) -> list[Provider]:
        op: LookupOp = core.get_providers(key, limit, self.now)
        address = core.bound
        found: list[Provider] = []
        while True:
            found += op.take()
            core.resume(op, self.now)
            self.pump(address)
            if op.done and not op.found:
                return found
            self.run(0.01)


def test_simulated_network_joins_and_finds_providers() -> None:
    net = SimNet(30, request_timeout=0.2)
    net.run(5.0)
    cores = list(net.cores.values())
    assert all(core.ready() for core in cores)
    assert min(len(core.routing) for core in cores) >= 20
    owners = cores[3], cores[11]
    for owner in owners:
        owner.provide(["sha256:x"], net.now)
        net.pump(owner.bound)
    net.run(2.0)
    found = net.providers(cores[20], "sha256:x")
    assert {p.node_id for p in found} == {o.node_id for o in owners}
    assert len(net.providers(cores[20], "sha256:x", limit=1)) == 1
    assert net.providers(cores[20], "sha256:nobody") == []


def test_lookups_survive_churn_on_fake_time() -> None:
    net = SimNet(40, seed=2, request_timeout=0.2)
    net.run(5.0)
    cores = list(net.cores.values())
    keys = {f"sha256:{i:064x}": cores[i % 40] for i in range(40)}
    for key, owner in keys.items():
        owner.provide([key], net.now)
        net.pump(owner.bound)
    net.run(3.0)
    rng = random.Random(5)
    gone = set(rng.sample(range(1, 40), 12))  # 30 %
    net.dead.update(cores[i].bound for i in gone)
    alive = [c for i, c in enumerate(cores) if i not in gone]
    for key, owner in keys.items():
        if owner.bound in net.dead:
            continue
        asker = rng.choice([c for c in alive if c is not owner])
        assert owner.node_id in {p.node_id for p in net.providers(asker, key)}, key


def test_reprovide_keeps_records_alive_and_withdraw_lets_them_lapse() -> None:
    minute = 60.0
    net = SimNet(8, seed=3, request_timeout=0.2)
    net.run(5.0)
    cores = list(net.cores.values())
    owner = cores[2]
    owner.provide(["sha256:a"], net.now)
    net.pump(owner.bound)
    kid = key_id("sha256:a")

    def holders() -> int:
        return sum(
            any(p.node_id == owner.node_id for p in c.store.get(kid, net.now)) for c in cores
        )

    net.run(1.0)
    initial = holders()
    assert initial >= 6
    for _ in range(60):  # three validity windows
        net.run(minute)
        assert holders() >= initial - 1
    owner.withdraw(["sha256:a"])
    net.run(20 * minute)
    assert holders() == 0


def test_announce_planner_groups_keys_by_region() -> None:
    rng = random.Random(4)
    ids = [rng.randbytes(16) for _ in range(1000)]
    groups = group_keys(ids, network_size=2000, k=20)
    bits = math.ceil(math.log2(2000 / 20))
    assert sum(len(g.keys) for g in groups) == 1000
    assert len(groups) <= 2**bits
    for group in groups:
        prefixes = {id_to_int(kid) >> (ID_BITS - bits) for kid in group.keys}
        assert len(prefixes) == 1
        assert id_to_int(group.target) >> (ID_BITS - bits) in prefixes
    known = [Contact(rng.randbytes(16), "127.0.0.1", 5001 + i) for i in range(60)]
    plan = Plan()
    plan.assign(groups[0], known, k=3)
    for kid in groups[0].keys:
        closest = sorted(known, key=lambda c: id_to_int(c.node_id) ^ id_to_int(kid))[:3]
        holders = {nid for nid, (_, kids) in plan.entries.items() if kid in kids}
        assert holders == {c.node_id for c in closest}
    many = Plan()
    many.entries[known[0].node_id] = (known[0], ids[: MAX_KEYS_PER_ADD * 2 + 1])
    assert [len(m.keys) for _, m in many.messages(("127.0.0.1", 5001, 5000))] == [
        MAX_KEYS_PER_ADD
    ] * 2 + [1]
    assert group_keys([ids[0]], network_size=5, k=20)[0].target == ids[0]


def test_decode_caches_are_bounded() -> None:
    rng = random.Random(6)
    for _ in range(messages.CACHE_SIZE // 16 + 50):
        contacts = tuple(
            Contact(rng.randbytes(16), f"10.{rng.randrange(256)}.0.1", 5001) for _ in range(20)
        )
        decode(encode(Envelope(1, OWN, Nodes(contacts))))
    assert len(messages._contacts) <= messages.CACHE_SIZE
    assert len(messages._contact_wire) <= messages.CACHE_SIZE


def test_find_node_message_is_the_lookup_target() -> None:
    core = lone_core()
    core.routing.observe(Contact(bytes([0x80]) * 16, "127.0.0.2", 5001), 0.0)
    target = bytes([0x81]) * 16
    core.find_node(target, 0.0)
    [request] = sends(core)
    assert decode(request.data).message == FindNode(target)
    assert bucket_index(id_to_int(OWN), id_to_int(target)) == ID_BITS - 1


def test_reprovide_is_spread_over_the_interval() -> None:
    net = SimNet(6, seed=4, request_timeout=0.2)
    net.run(5.0)
    owner = list(net.cores.values())[1]
    owner.provide([f"sha256:{i:064x}" for i in range(600)], net.now)
    net.pump(owner.bound)
    net.run(1.0)
    sent = []
    for _ in range(30):  # one re-provide interval, 30 s at a time
        before = owner.counters.requests_sent
        net.run(30.0)
        sent.append(owner.counters.requests_sent - before)
    assert sum(sent) > 0
    assert max(sent) <= 4 * (sum(sent) / len(sent))  # no burst
    assert sum(1 for s in sent if s) >= 20  # spread over most of the interval


def test_stale_buckets_are_refreshed() -> None:
    net = SimNet(5, seed=5, request_timeout=0.2, refresh_interval=600.0)
    net.run(5.0)
    core = list(net.cores.values())[2]
    before = core.lookups
    net.run(300.0)
    assert core.lookups == before  # nothing stale yet
    net.run(400.0)
    assert core.lookups > before
    assert core.ready()
