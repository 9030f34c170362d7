"""The sans-I/O core: ids, routing table, lookup state machine, provider store, handler."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dht
from dht.handler import RequestHandler
from dht.identity import load_or_create_node_id
from dht.ids import bucket_index, distance, id_to_int, key_id
from dht.lookup import Lookup, State
from dht.messages import (
    AddProvider,
    AddProviderAck,
    Contact,
    Envelope,
    FindNode,
    GetProviders,
    Nodes,
    Ping,
    Pong,
    Provider,
    Providers,
)
from dht.providers import ProviderStore, ReprovideSchedule
from dht.routing import RoutingTable


def make_contact(rng: random.Random, i: int = 0) -> Contact:
    return Contact(rng.randbytes(16), f"127.0.0.{1 + i % 250}", 5001 + i // 250)


CORE = [
    "ids",
    "auth",
    "cookies",
    "messages",
    "routing",
    "lookup",
    "providers",
    "claims",
    "handler",
    "requests",
    "announce",
    "operations",
    "config",
    "core",
]


@pytest.mark.parametrize("module", CORE)
def test_core_imports_neither_trio_nor_the_shell(module: str) -> None:
    source = Path(dht.__file__).with_name(f"{module}.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
    assert "trio" not in imported
    assert not imported & {"os", "time"}  # no file I/O, no clock, no urandom
    assert not imported & {".transport", ".node", ".bootstrap", ".identity"}
    assert {name[1:] for name in imported if name.startswith(".")} <= set(CORE)


def test_key_ids() -> None:
    a = key_id("sha256:" + "ab" * 32)
    assert len(a) == 16
    assert a == key_id("sha256:" + "ab" * 32)
    assert a != key_id("docker.io/library/nginx:latest")
    assert distance(a, a) == 0
    assert bucket_index(id_to_int(a), id_to_int(a)) == -1


def test_node_id_is_kept_in_data_dir(tmp_path: Path) -> None:
    first = load_or_create_node_id(tmp_path / "state")
    assert len(first) == 16
    assert load_or_create_node_id(tmp_path / "state") == first
    (tmp_path / "state" / "dht-node-id").write_text("garbage")
    assert load_or_create_node_id(tmp_path / "state") != first


# -- routing table -------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 300), st.integers(1, 25))
def test_closest_matches_brute_force(seed: int, n: int, count: int) -> None:
    rng = random.Random(seed)
    table = RoutingTable(rng.randbytes(16), k=8)
    for i in range(n):
        table.observe(make_contact(rng, i), 0.0)
    everyone = table.contacts()
    assert len(everyone) == len(table)
    for _ in range(5):
        target = rng.randbytes(16)
        expected = sorted(everyone, key=lambda c: distance(c.node_id, target))[:count]
        assert table.closest(target, count) == expected
    own = table.closest(table.own_id, count)
    assert own == sorted(everyone, key=lambda c: distance(c.node_id, table.own_id))[:count]
    if everyone:
        excluded = everyone[0].node_id
        assert excluded not in [c.node_id for c in table.closest(excluded, count, exclude=excluded)]


def _same_bucket_contacts(table: RoutingTable, rng: random.Random, n: int) -> list[Contact]:
    """Contacts that all fall in the farthest bucket (top bit differs from ours)."""
    out = []
    while len(out) < n:
        c = make_contact(rng, len(out))
        if bucket_index(id_to_int(table.own_id), id_to_int(c.node_id)) == 127:
            out.append(c)
    return out


def test_full_bucket_keeps_old_contacts_and_caches_new_ones() -> None:
    rng = random.Random(1)
    table = RoutingTable(rng.randbytes(16), k=3, questionable_after=60)
    a, b, c, d, e = _same_bucket_contacts(table, rng, 5)
    for x in (a, b, c):
        assert table.observe(x, 0.0) is None
    assert table.observe(d, 10.0) is None  # head seen recently: no ping needed
    assert d.node_id not in table
    assert table.replacement_contacts() == [d]
    assert table.observe(e, 100.0) == a  # least recently seen, questionable: ping it
    assert e.node_id not in table
    table.observe(a, 101.0)  # it answered: moves to the tail, stays
    assert [x.node_id for x in table.contacts()] == [b.node_id, c.node_id, a.node_id]


def test_failed_contact_is_replaced_from_the_cache() -> None:
    rng = random.Random(2)
    table = RoutingTable(rng.randbytes(16), k=2)
    a, b, c, d = _same_bucket_contacts(table, rng, 4)
    for x in (a, b, c, d):
        table.observe(x, 0.0)
    assert {x.node_id for x in table.contacts()} == {a.node_id, b.node_id}
    table.on_failure(a.node_id)
    assert a.node_id not in table
    assert d.node_id in table  # the freshest replacement
    assert table.replacement_contacts() == [c]
    assert len(table) == 2


def test_failed_contact_without_replacement_stays_until_stale() -> None:
    rng = random.Random(3)
    table = RoutingTable(rng.randbytes(16), k=20, max_failures=3)
    a = make_contact(rng)
    table.observe(a, 0.0)
    table.on_failure(a.node_id)
    table.on_failure(a.node_id)
    assert a.node_id in table
    table.observe(a, 1.0)  # answering resets the count
    for _ in range(2):
        table.on_failure(a.node_id)
    assert a.node_id in table
    table.on_failure(a.node_id)
    assert a.node_id not in table


def test_a_failing_head_gives_way_to_a_new_contact() -> None:
    rng = random.Random(4)
    table = RoutingTable(rng.randbytes(16), k=2, max_failures=5)
    a, b, c = _same_bucket_contacts(table, rng, 3)
    table.observe(a, 0.0)
    table.observe(b, 0.0)
    table.on_failure(a.node_id)  # no replacement yet: stays, flagged
    assert a.node_id in table
    table.observe(c, 1.0)
    assert a.node_id not in table
    assert {x.node_id for x in table.contacts()} == {b.node_id, c.node_id}


def test_random_id_in_bucket_and_network_size_estimate() -> None:
    rng = random.Random(5)
    table = RoutingTable(rng.randbytes(16), k=20)
    own = id_to_int(table.own_id)
    for index in (0, 1, 64, 127):
        assert bucket_index(own, id_to_int(table.random_id_in_bucket(index, rng))) == index
    for i in range(2000):
        table.observe(make_contact(rng, i), 0.0)
    # Our table only keeps k per bucket, but the estimate comes from the nearest ones.
    assert 500 < table.estimate_network_size() < 8000


# -- lookup ----------------------------------------------------------------------------


class SimNetwork:
    """Nodes answering FIND_NODE synchronously. Each has heard of every other
    node, in a random order, and kept what its k-buckets hold: a table as
    Kademlia builds it, knowing its neighbourhood well and far regions sparsely."""

    def __init__(self, n: int, k: int, seed: int) -> None:
        rng = random.Random(seed)
        self.k = k
        self.contacts = [make_contact(rng, i) for i in range(n)]
        self.tables = {c.node_id: RoutingTable(c.node_id, k) for c in self.contacts}
        for c in self.contacts:
            for other in rng.sample(self.contacts, n):
                self.tables[c.node_id].observe(other, 0.0)
        self.dead: set[bytes] = set()

    def true_closest(self, target: bytes) -> list[Contact]:
        alive = [c for c in self.contacts if c.node_id not in self.dead]
        return sorted(alive, key=lambda c: distance(c.node_id, target))[: self.k]

    def lookup(self, start: Contact, target: bytes, alpha: int = 3) -> Lookup:
        seeds = self.tables[start.node_id].closest(target, self.k)
        lookup = Lookup(target, seeds, own_id=start.node_id, k=self.k, alpha=alpha)
        waiting: list[Contact] = []
        rng = random.Random(target)
        while True:
            waiting.extend(lookup.next_requests())
            assert lookup.in_flight <= alpha
            if lookup.done:
                return lookup
            # Replies come back in any order.
            contact = waiting.pop(rng.randrange(len(waiting)))
            if contact.node_id in self.dead:
                lookup.on_failure(contact.node_id)
            else:
                reply = self.tables[contact.node_id].closest(target, self.k, exclude=start.node_id)
                lookup.on_reply(contact.node_id, reply)


def test_lookup_finds_the_k_closest() -> None:
    net = SimNetwork(300, k=20, seed=6)
    rng = random.Random(7)
    exact = 0
    hops = []
    for _ in range(50):
        start = rng.choice(net.contacts)
        target = rng.randbytes(16)
        lookup = net.lookup(start, target)
        truth = [c for c in net.true_closest(target) if c != start]
        result = lookup.result()
        exact += result[: len(truth)] == truth[: len(result)]
        assert len(set(result) & set(truth)) >= 19
        hops.append(lookup.hops)
    assert exact >= 48
    assert sum(hops) / len(hops) <= 3, hops


@pytest.mark.parametrize("dead_fraction", [0.1, 0.3])
def test_lookup_survives_dead_nodes(dead_fraction: float) -> None:
    net = SimNetwork(300, k=20, seed=8)
    rng = random.Random(9)
    net.dead = {c.node_id for c in rng.sample(net.contacts, int(300 * dead_fraction))}
    alive = [c for c in net.contacts if c.node_id not in net.dead]
    for _ in range(30):
        start = rng.choice(alive)
        target = rng.randbytes(16)
        result = net.lookup(start, target).result()
        assert not {c.node_id for c in result} & net.dead
        truth = [c for c in net.true_closest(target) if c != start]
        # Dead nodes still fill the others' tables (nothing heals here), so
        # replies carry fewer live contacts; the nearest live ones are found.
        assert truth[:3] == result[:3]
        assert len(set(result) & set(truth)) >= 20 * (1 - dead_fraction) - 3


def test_next_request_goes_out_as_soon_as_one_reply_arrives() -> None:
    rng = random.Random(10)
    own = rng.randbytes(16)
    seeds = [make_contact(rng, i) for i in range(10)]
    lookup = Lookup(rng.randbytes(16), seeds, own_id=own, k=20, alpha=3)
    first = lookup.next_requests()
    assert len(first) == 3 and lookup.in_flight == 3
    assert lookup.next_requests() == []  # alpha reached
    lookup.on_reply(first[1].node_id, [])
    second = lookup.next_requests()
    assert len(second) == 1  # one slot freed, one new request: no waiting for the round
    assert lookup.in_flight == 3
    lookup.on_failure(first[0].node_id)
    assert len(lookup.next_requests()) == 1
    assert lookup.state(first[0].node_id) is State.FAILED


def test_stalled_requests_free_their_slot_and_late_replies_count() -> None:
    rng = random.Random(11)
    own = rng.randbytes(16)
    target = rng.randbytes(16)
    seeds = sorted(
        (make_contact(rng, i) for i in range(4)), key=lambda c: distance(c.node_id, target)
    )
    lookup = Lookup(target, seeds, own_id=own, k=3, alpha=1)
    (slow,) = lookup.next_requests()
    lookup.on_stall(slow.node_id)
    assert lookup.in_flight == 0
    (nxt,) = lookup.next_requests()
    assert nxt != slow
    lookup.on_reply(nxt.node_id, [])
    newcomer = Contact(target[:-1] + bytes([target[-1] ^ 1]), "127.0.0.9", 5001)
    lookup.on_reply(slow.node_id, [newcomer])  # late, still used
    assert lookup.state(slow.node_id) is State.SUCCEEDED
    assert lookup.next_requests() == [newcomer]


def test_lookup_is_done_without_seeds() -> None:
    lookup = Lookup(bytes(16), [], own_id=bytes(range(16)))
    assert lookup.next_requests() == []
    assert lookup.done
    assert lookup.result() == []


# -- provider store and re-provide schedule ------------------------------------------------


def provider(i: int) -> Provider:
    return Provider(i.to_bytes(16, "big"), f"127.0.0.{i}", 5001, 5000)


def test_records_expire_after_the_validity_window() -> None:
    store = ProviderStore(ttl=19 * 60)
    key = key_id("sha256:aa")
    store.add(key, provider(1), now=0.0)
    store.add(key, provider(2), now=300.0)
    assert set(store.get(key, now=1139.0)) == {provider(1), provider(2)}
    assert store.get(key, now=1140.0) == [provider(2)]  # lapsed, even before a sweep
    assert store.expire(now=1140.0) == 1
    assert len(store) == 1
    store.add(key, provider(2), now=1000.0)  # re-provided: validity extends
    assert store.get(key, now=2000.0) == [provider(2)]
    assert store.expire(now=2140.0) == 1
    assert len(store) == 0
    assert store.get(key, now=0.0) == []


def test_store_bounds() -> None:
    store = ProviderStore(ttl=10, max_per_key=3, max_records=5)
    key = key_id("k")
    assert all(store.add(key, provider(i), 0.0) for i in range(3))
    assert not store.add(key, provider(4), 0.0)
    assert store.add(key, provider(1), 0.0)  # refresh is always fine
    assert len(store.get(key, 0.0, limit=2)) == 2
    assert store.add(key_id("j"), provider(1), 0.0)
    assert store.add(key_id("j"), provider(2), 0.0)
    assert not store.add(key_id("l"), provider(1), 0.0)
    assert len(store) == 5


def test_reprovide_is_spread_evenly_and_on_time() -> None:
    interval, ttl, tick = 15 * 60.0, 19 * 60.0, 30.0
    schedule = ReprovideSchedule(interval)
    keys = [f"sha256:{i:064x}" for i in range(10_000)]
    assert schedule.add(keys, now=0.0) == keys
    assert schedule.add(keys[:10], now=0.0) == []  # already provided
    last = dict.fromkeys(keys, 0.0)
    per_tick: list[int] = []
    now = 0.0
    while now < 3 * interval:
        now += tick
        due = schedule.pop_due(now)
        per_tick.append(len(due))
        for key in due:
            assert now - last[key] <= interval + tick < ttl  # never lapses
            last[key] = now
    mean = len(keys) * tick / interval
    assert max(per_tick) < 1.5 * mean  # no burst
    assert min(per_tick) > 0.5 * mean
    assert all(now - t <= interval + tick for t in last.values())


def test_withdrawn_keys_are_not_reprovided() -> None:
    schedule = ReprovideSchedule(60.0)
    schedule.add(["a", "b", "c"], now=0.0)
    assert schedule.has_id(key_id("b"))
    assert schedule.remove(["b", "zz"]) == ["b"]
    assert not schedule.has_id(key_id("b")) and "b" not in schedule
    seen = set()
    for t in range(1, 200):
        seen.update(schedule.pop_due(float(t)))
    assert seen == {"a", "c"}
    schedule.add(["b"], now=200.0)  # provided again later: scheduled again
    assert "b" in schedule.pop_due(261.0)


# -- request handler -----------------------------------------------------------------------


def test_handler_answers_requests() -> None:
    rng = random.Random(12)
    own_id, requester = rng.randbytes(16), rng.randbytes(16)
    table = RoutingTable(own_id, k=20)
    for i in range(50):
        table.observe(make_contact(rng, i), 0.0)
    store = ProviderStore(ttl=100)
    own_key = key_id("mine")
    me = Provider(own_id, "127.0.0.1", 5001, 5000)
    handler = RequestHandler(table, store, lambda k: me if k == own_key else None, k=20)

    pong = handler.handle(Envelope(1, requester, Ping()), "127.0.0.7", 4000, 0.0)
    assert pong == Pong("127.0.0.7", 4000)

    target = rng.randbytes(16)
    nodes = handler.handle(Envelope(2, requester, FindNode(target)), "127.0.0.7", 4000, 0.0)
    assert isinstance(nodes, Nodes) and nodes.contacts == tuple(table.closest(target, 20))

    key = key_id("sha256:x")
    # Without a cluster key the record names the datagram's source, whatever it says.
    add = AddProvider("10.9.9.9", 9, 5005, (key, own_key))
    ack = handler.handle(Envelope(3, requester, add), "127.0.0.7", 4000, 0.0)
    assert ack == AddProviderAck(2)
    stored = Provider(requester, "127.0.0.7", 4000, 5005)  # host and UDP port from the source
    assert store.get(key, 1.0) == [stored]

    reply = handler.handle(Envelope(4, requester, GetProviders(own_key, 20)), "127.0.0.8", 1, 0.0)
    assert isinstance(reply, Providers)
    assert reply.providers == (me, stored)  # own record first
    assert reply.contacts == tuple(table.closest(own_key, 20))

    assert handler.handle(Envelope(5, requester, Pong("1.2.3.4", 1)), "127.0.0.8", 1, 0.0) is None


def test_one_address_holds_one_contact() -> None:
    rng = random.Random(13)
    table = RoutingTable(rng.randbytes(16), k=20)
    first = Contact(rng.randbytes(16), "127.0.0.5", 5001)
    table.observe(first, 0.0)
    restarted = Contact(rng.randbytes(16), "127.0.0.5", 5001)
    table.observe(restarted, 1.0)
    assert first.node_id not in table
    assert table.contacts() == [restarted]
    moved = Contact(restarted.node_id, "127.0.0.6", 5001)
    # A known id at a new address: its old address is to be asked first.
    assert table.observe(moved, 2.0) == restarted
    assert table.contacts() == [restarted]
    table.on_failure(restarted.node_id, ("127.0.0.5", 5001))  # silent there: it moved
    assert table.contacts() == [moved]
    table.observe(Contact(rng.randbytes(16), "127.0.0.5", 5001), 3.0)  # old address reused
    assert len(table) == 2


def test_reprovide_catches_up_without_a_burst_of_repeats() -> None:
    schedule = ReprovideSchedule(60.0)
    schedule.add(["a"], now=0.0)
    assert schedule.pop_due(1000.0) == ["a"]  # far behind: provided once, not 16 times
    assert schedule.pop_due(1000.0) == []
    next_due = schedule.next_due()
    assert next_due is not None and 1000.0 < next_due <= 1060.0
