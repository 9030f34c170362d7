"""Hostile peers against the node core, on fake time (issue 12, items 4-6): replayed and
stale sealed datagrams, spoofed sources, amplification, sybil records, record floods."""

from __future__ import annotations

import random

from dht_peer import Peer
from test_dht_node_core import SimNet, lone_core, sends

from dht.config import NodeConfig
from dht.core import NodeCore, Send, WakeAt
from dht.ids import key_id
from dht.messages import (
    ADD_INFLIGHT,
    ADD_PROVIDER,
    CLAIM,
    MAX_KEYS_PER_ADD,
    AddProvider,
    AddProviderAck,
    ClaimReply,
    ClaimRequest,
    Contact,
    Envelope,
    FindNode,
    GetProviders,
    Nodes,
    Ping,
    Pong,
    Provider,
    Providers,
    Retry,
    decode,
    encode,
)
from dht.providers import MAX_PER_HOST, MAX_PER_KEY_PER_HOST, MAX_RECORDS

KEY = "sha256:" + "cd" * 32
CLUSTER_KEY = b"cluster key of the test"
ATTACKER = ("127.0.9.66", 7777)

Address = tuple[str, int]


class TappedNet(SimNet):
    """A simulated network that keeps every datagram sent: (from, Send)."""

    def __init__(self, n: int, **changes: object) -> None:
        super().__init__(n, **changes)
        self.sent = []

    def captured(self, kind: int, source: NodeCore, to: NodeCore | None = None) -> list[bytes]:
        """Datagrams of type `kind` `source` sent (to `to`)."""
        return [send.data for send in self.sends(kind, source, to)]

    def sends(self, kind: int, source: NodeCore, to: NodeCore | None = None) -> list[Send]:
        """The type is the payload's third byte (array header, version, type), sealed or not."""
        return [
            send
            for sender, send in self.sent or []
            if sender == source.bound
            and send.data[2] == kind
            and (to is None or send.address == to.bound)
        ]


def keyed_net(n: int = 12, seed: int = 31, **changes: object) -> TappedNet:
    net = TappedNet(n, seed=seed, request_timeout=0.2, cluster_key=CLUSTER_KEY, **changes)
    net.run(5.0)
    assert all(core.ready() for core in net.cores.values())
    return net


def provide(net: SimNet, core: NodeCore, key: str = KEY) -> None:
    core.provide([key], net.now)
    net.pump(core.bound)
    net.run(1.0)


def records(core: NodeCore, now: float, key: str = KEY) -> list[Provider]:
    return core.store.get(key_id(key), now)


def own(core: NodeCore) -> Provider:
    return Provider(core.node_id, *core.bound, core.config.registry_port)


# -- item 4: replay, stale datagrams, the address inside the seal -------------------------


def test_a_replayed_add_provider_from_another_source_is_refused() -> None:
    net = keyed_net(k=4)
    cores = list(net.cores.values())
    author = cores[1]
    provide(net, author)
    holders = [c for c in cores if records(c, net.now)]
    assert holders and all(records(c, net.now) == [own(author)] for c in holders)
    holder = holders[0]
    [captured, *_] = net.captured(ADD_PROVIDER, author, holder)
    # A non-member that saw the datagram resends it later, from its own address.
    net.now += 5.0
    holder.receive(captured, *ATTACKER, net.now)
    assert holder.counters.dropped_replayed == 1
    assert records(holder, net.now) == [own(author)]  # the record stays the author's
    contact = holder.routing.get(author.node_id)
    assert contact == Contact(author.node_id, *author.bound)  # and so does its routing entry
    assert not [c for c in holder.take_commands() if isinstance(c, Send)]  # no answer either


def test_a_sealed_record_names_its_author_wherever_it_comes_from() -> None:
    net = keyed_net(k=4)
    cores = list(net.cores.values())
    author = cores[1]
    provide(net, author)
    stranger = next(c for c in cores if c is not author and not records(c, net.now))
    [captured, *_] = net.captured(ADD_PROVIDER, author)
    # Resent within the window to a node that has not seen it: stored, but as the
    # author's record (the address is inside the seal), not the sender's.
    stranger.receive(captured, *ATTACKER, net.now + 1.0)
    assert records(stranger, net.now + 1.0) == [own(author)]
    contact = stranger.routing.get(author.node_id)
    assert contact is None or contact == Contact(author.node_id, *author.bound)


def test_a_datagram_outside_the_replay_window_is_refused() -> None:
    net = keyed_net(k=4)
    cores = list(net.cores.values())
    author = cores[1]
    provide(net, author)
    stranger = next(c for c in cores if c is not author and not records(c, net.now))
    [captured, *_] = net.captured(ADD_PROVIDER, author)
    later = net.now + 31.0  # the window is 30 s either side
    stranger.receive(captured, *author.bound, later)  # even from the author's own address
    assert stranger.counters.dropped_stale == 1
    assert records(stranger, later) == []
    # Nor where the receiver's clock is behind the stamp by more than the window.
    stranger.clock_offset = -62.0
    stranger.receive(captured, *author.bound, later)
    assert stranger.counters.dropped_stale == 2
    assert records(stranger, later) == []


def test_claims_and_inflight_records_are_sealed_the_same_way() -> None:
    net = keyed_net(k=4, seed=32)
    cores = list(net.cores.values())
    author = cores[2]
    op = author.claim(KEY, 5.0, net.now)
    net.pump(author.bound)
    net.run(1.0)
    assert op.done
    [sent, *_] = net.sends(CLAIM, author)  # the arbiter is another node, for this seed
    arbiter = net.cores[sent.address]
    arbiter.receive(sent.data, *ATTACKER, net.now)  # replayed: refused
    assert arbiter.counters.dropped_replayed == 1
    held = arbiter.claims.get(key_id(KEY), net.now)
    assert held is not None and held.holder == own(author)
    # A fresh claim by another node learns the author's address, not a sender's.
    other = Peer(bytes([0x42]) * 16, *ATTACKER, key=CLUSTER_KEY)
    message = ClaimRequest(key_id(KEY), 5.0, "127.0.9.67", 7000, 5000)
    answer = other.ask(arbiter, message, net.now).message
    assert isinstance(answer, ClaimReply) and answer.holder == own(author)

    author.provide_inflight(KEY, 10, 100, net.now)
    net.pump(author.bound)
    net.run(1.0)
    [inflight, *_] = net.captured(ADD_INFLIGHT, author)
    stranger = next(c for c in cores if c is not author and not records(c, net.now))
    stranger.receive(inflight, *ATTACKER, net.now)
    assert records(stranger, net.now) == [Provider(author.node_id, *author.bound, 5000, (10, 100))]


def test_a_node_id_moves_only_when_its_old_address_stops_answering() -> None:
    core = lone_core(request_timeout=0.5)
    real = Contact(bytes([0x80]) * 16, "127.0.0.2", 5001)
    old = (real.host, real.port)
    core.routing.observe(real, 0.0)
    impostor = Peer(real.node_id, *ATTACKER)  # no cluster key here: an id is only a claim
    impostor.send(core, Ping(), 0.1)  # unverified (no cookie): touches nothing
    assert core.routing.get(real.node_id) == real
    impostor.ask(core, Ping(), 0.2)  # now it has a cookie for its own address
    asked = [s for s in impostor.send(core, Ping(), 0.3) if s.address == old]
    assert core.routing.get(real.node_id) == real  # one datagram moves nothing...
    assert asked, "the old address was not asked"  # ...the old address is asked first
    rid = decode(asked[0].data).request_id
    core.receive(encode(Envelope(rid, real.node_id, Pong("127.0.0.1", 5001))), *old, 0.35)
    core.tick(5.0)
    assert core.routing.get(real.node_id) == real  # it answered: it stays
    # Once the old address is silent, the id lives at the new one (a restart elsewhere).
    asked = [s for s in impostor.send(core, Ping(), 70.0) if s.address == old]
    assert asked
    core.tick(70.6)
    assert core.routing.get(real.node_id) == Contact(real.node_id, *ATTACKER)


# -- item 4: spoofed sources without a key, amplification -------------------------------


def test_a_spoofed_add_provider_stores_nothing_without_a_key() -> None:
    core = lone_core()
    victim = ("127.0.0.99", 8080)  # the address an attacker wants the cluster to fetch from
    request = encode(
        Envelope(1, bytes([0x81]) * 16, AddProvider(*victim, 5000, (key_id(KEY),))),
        pad_to=128,
    )
    core.receive(request, *victim, 0.0)  # the source is forged: no cookie for it
    assert records(core, 0.0) == []
    [reply] = sends(core)
    assert isinstance(decode(reply.data).message, Retry)
    assert len(reply.data) <= len(request)


def test_an_unverified_address_gets_no_answer_larger_than_its_request() -> None:
    rng = random.Random(5)
    core = lone_core()
    for i in range(60):
        core.routing.observe(Contact(rng.randbytes(16), f"127.0.3.{i + 1}", 5001), 0.0)
    kid = key_id(KEY)
    for i in range(30):
        core.store.add(kid, Provider(rng.randbytes(16), f"10.0.0.{i + 1}", 5001, 5000), 0.0)
    spoofed = ("127.0.0.200", 4444)
    sent = received = 0
    for request in (
        encode(Envelope(7, bytes([0x90]) * 16, GetProviders(kid, 20))),  # the bare request
        encode(Envelope(8, bytes([0x90]) * 16, Ping())),
        encode(Envelope(9, bytes([0x90]) * 16, GetProviders(kid, 20), b"forged!!")),
    ):
        core.receive(request, *spoofed, 1.0)
        sent += len(request)
        received += sum(len(s.data) for s in sends(core) if s.address == spoofed)
    assert received <= sent  # amplification factor <= 1 (was 24x)
    # A requester that pads its request as the protocol says gets the whole answer.
    peer = Peer(bytes([0x91]) * 16, *spoofed)
    datagram = peer.datagram(GetProviders(kid, 20), core.bound, 1.0)
    core.receive(datagram, *spoofed, 1.0)
    [reply] = sends(core)
    answer = decode(reply.data)
    assert isinstance(answer.message, Providers) and len(answer.message.providers) == 20
    assert len(reply.data) <= len(datagram)
    assert answer.cookie is not None  # and with its cookie, small requests from then on
    peer.cookies[core.bound] = answer.cookie
    small = peer.datagram(GetProviders(kid, 20), core.bound, 2.0)
    core.receive(small, *spoofed, 2.0)
    [reply] = sends(core)
    assert isinstance(decode(reply.data).message, Providers)
    assert len(small) < 100 < len(reply.data)


def test_a_retry_is_followed_once_with_the_cookie() -> None:
    core = lone_core(request_timeout=0.5)
    peer = Contact(bytes([0x80]) * 16, "127.0.0.2", 5001)
    op = core.ping((peer.host, peer.port), 0.0)
    [first] = sends(core)
    assert decode(first.data).cookie is None and len(first.data) >= 128  # padded
    cookie = b"cookie!!"
    rid = decode(first.data).request_id
    core.receive(encode(Envelope(rid, peer.node_id, Retry(), cookie)), *first.address, 0.01)
    [again] = sends(core)
    resent = decode(again.data)
    assert resent.cookie == cookie and resent.request_id != rid and len(again.data) < 128
    core.receive(
        encode(Envelope(resent.request_id, peer.node_id, Retry(), cookie)), *again.address, 0.02
    )
    assert op.done and not op.answered  # told to retry twice: no answer
    assert core.counters.retries == 2


# -- item 5: sybil records ------------------------------------------------------------------


def test_sybil_records_from_one_address_do_not_hide_a_real_provider() -> None:
    rng = random.Random(7)
    holder = lone_core()
    kid = key_id(KEY)
    sybil_host = "127.0.9.1"
    for i in range(256):  # 256 node ids on one machine, each announcing the key
        sybil = Peer(rng.randbytes(16), sybil_host, 6000 + i)
        sybil.ask(holder, AddProvider(sybil_host, 6000 + i, 7000 + i, (kid,)), 0.0)
    real = Peer(rng.randbytes(16), "127.0.0.20", 5001)
    assert real.ask(holder, AddProvider("127.0.0.20", 5001, 5000, (kid,)), 0.1).message == (
        AddProviderAck(1)
    )
    assert holder.store.records_of(sybil_host) == MAX_PER_KEY_PER_HOST
    # The holder's answer puts one record per host first: the real one is in it.
    asker = Peer(rng.randbytes(16), "127.0.0.30", 5001)
    for limit in (2, 3, 20):
        answer = asker.ask(holder, GetProviders(kid, limit), 1.0).message
        assert isinstance(answer, Providers)
        assert "127.0.0.20" in {p.host for p in answer.providers}, limit
    # A lookup's limit counts hosts: a crowd of ids on one host takes one place.
    seeker = lone_core()
    crowd = [Provider(rng.randbytes(16), sybil_host, 6000 + i, 7000 + i) for i in range(256)]
    honest = Provider(rng.randbytes(16), "127.0.0.20", 5001, 5000)
    seeker.routing.observe(Contact(rng.randbytes(16), "127.0.0.40", 5001), 0.0)
    op = seeker.get_providers(KEY, 3, 0.0)
    [request] = sends(seeker)
    answer_rid = decode(request.data).request_id
    reply = Envelope(
        answer_rid, seeker.routing.contacts()[0].node_id, Providers((*crowd[:20], honest), ())
    )
    seeker.receive(encode(reply), *request.address, 0.01)
    found = op.take()
    assert honest in found
    assert sum(p.host == sybil_host for p in found) <= MAX_PER_KEY_PER_HOST


# -- item 6: record floods, expiry without a stall -------------------------------------------


def test_a_record_flood_is_bounded_per_source_and_in_total() -> None:
    rng = random.Random(8)
    core = lone_core()
    now = 0.0
    sources = [Peer(rng.randbytes(16), f"127.0.8.{i + 1}", 5001) for i in range(10)]
    per_source = MAX_PER_HOST + 5_000  # each one tries more than its share: bounded count
    for peer in sources:
        for _ in range(per_source // MAX_KEYS_PER_ADD + 1):
            keys = tuple(rng.randbytes(16) for _ in range(MAX_KEYS_PER_ADD))
            peer.ask(core, AddProvider(peer.host, peer.port, 5000, keys), now)
        assert core.store.records_of(peer.host) <= MAX_PER_HOST
        assert len(core.store) <= MAX_RECORDS
        now += 0.01
    assert len(core.store) == MAX_RECORDS
    assert core.store.records_of(sources[-1].host) < MAX_PER_HOST  # the table was full
    # A full table refuses, it does not grow; once records lapse there is room again.
    late = Peer(rng.randbytes(16), "127.0.8.200", 5001)
    late.ask(core, AddProvider(late.host, late.port, 5000, (rng.randbytes(16),)), now)
    assert len(core.store) == MAX_RECORDS


def test_expiry_does_a_bounded_batch_per_tick() -> None:
    rng = random.Random(9)
    core = lone_core(record_ttl=100.0, reprovide_interval=60.0)
    provider = Provider(rng.randbytes(16), "127.0.0.5", 5001, 5000)
    count = 50_000
    core.store.max_per_host = count
    for i in range(count):
        core.store.add(i.to_bytes(16, "big"), provider, float(i % 3) / 10)
    assert len(core.store) == count
    core.take_commands()
    now, ticks, most = 106.0, 0, 0  # every record has lapsed
    wake = 0.0
    while len(core.store) and ticks < 1000:
        before = len(core.store)
        core.tick(now)
        ticks += 1
        most = max(most, before - len(core.store))
        wake = ([wake] + [c.when for c in core.take_commands() if isinstance(c, WakeAt)])[-1]
        if len(core.store):  # more to do: the core asks to be woken again at once
            assert wake <= now
    assert len(core.store) == 0
    assert most <= core.store.batch  # no tick walked the whole table
    assert ticks >= count // core.store.batch


def test_a_node_on_a_wildcard_learns_its_address_before_it_announces() -> None:
    config = NodeConfig(bind_host="0.0.0.0", bind_port=5001, cluster_key=CLUSTER_KEY)
    core = NodeCore(config, bytes(16), ("0.0.0.0", 5001), 0.0, rng=random.Random(3))
    core.take_commands()
    peer = Peer(bytes([0x80]) * 16, "127.0.0.2", 5001, key=CLUSTER_KEY)
    core.routing.observe(Contact(peer.node_id, peer.host, peer.port), 0.0)
    core.provide([KEY], 0.0)
    requests = [peer.open(s.data, 0.0) for s in sends(core)]
    kinds = {type(r.message) for r in requests}
    assert kinds == {Ping, FindNode}  # asks where it is, and looks the key up
    for nonce, request in enumerate(requests):  # the peer answers both
        reply = Pong("10.1.2.3", 5001) if isinstance(request.message, Ping) else Nodes(())
        payload = encode(Envelope(request.request_id, peer.node_id, reply, b"cookie!!"))
        core.receive(peer.auth.seal(payload, 0.01, 1000 + nonce), peer.host, peer.port, 0.01)
    adds = [peer.open(s.data, 0.02).message for s in sends(core)]
    [add] = [m for m in adds if isinstance(m, AddProvider)]
    assert (add.host, add.udp_port) == ("10.1.2.3", 5001)  # not 0.0.0.0, which holders refuse


def test_a_keyed_holder_refuses_a_record_naming_no_address() -> None:
    holder = NodeCore(
        NodeConfig(bind_host="127.0.0.1", bind_port=5001, cluster_key=CLUSTER_KEY),
        bytes(16),
        ("127.0.0.1", 5001),
        0.0,
        rng=random.Random(4),
    )
    peer = Peer(bytes([0x80]) * 16, "127.0.0.2", 5001, key=CLUSTER_KEY)
    ack = peer.ask(holder, AddProvider("0.0.0.0", 5001, 5000, (key_id(KEY),)), 0.0)
    assert ack.message == AddProviderAck(0)
    assert records(holder, 0.0) == []
