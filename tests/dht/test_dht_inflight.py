"""In-flight provider records: a node still fetching a key says so, with its progress;
holders keep such records briefly, complete records win over them."""

from __future__ import annotations

from collections import Counter

from dht_peer import Peer
from test_dht_node_core import SimNet, lone_core

from dht.ids import key_id
from dht.messages import AddInflight, AddProviderAck, Envelope, Provider, decode, encode
from dht.providers import ProviderStore

KEY = "sha256:" + "ef" * 32
A = Provider(b"a" * 16, "127.0.0.1", 5001, 5000)
B = Provider(b"b" * 16, "127.0.0.2", 5001, 5000)


def fetching(p: Provider, done: int, total: int) -> Provider:
    return Provider(p.node_id, p.host, p.udp_port, p.registry_port, (done, total))


def test_store_keeps_complete_records_over_inflight_ones() -> None:
    store = ProviderStore(ttl=100.0)
    kid = key_id(KEY)
    assert store.add(kid, fetching(A, 1, 10), 0.0, ttl=5.0)
    assert store.add(kid, B, 0.0)
    assert store.get(kid, 1.0) == [B, fetching(A, 1, 10)]  # complete first
    assert store.get(kid, 5.0) == [B]  # the in-flight record lapsed
    assert store.add(kid, fetching(A, 2, 10), 6.0, ttl=5.0)
    assert store.add(kid, A, 7.0)  # committed: replaces the in-flight record
    assert store.add(kid, fetching(A, 3, 10), 8.0, ttl=5.0)  # a stale in-flight one: ignored
    assert sorted(store.get(kid, 50.0), key=lambda p: p.node_id) == [A, B]
    assert len(store) == 2


def test_the_holder_stores_an_inflight_record_with_a_short_ttl() -> None:
    core = lone_core(inflight_ttl=10.0)
    kid = key_id(KEY)
    sender = bytes([0x80]) * 16
    ack = Peer(sender, "127.0.0.9", 6001).ask(core, AddInflight(kid, "::", 1, 5007, 10, 100), 0.0)
    assert ack.message == AddProviderAck(1)
    assert core.store.get(kid, 9.9) == [Provider(sender, "127.0.0.9", 6001, 5007, (10, 100))]
    assert core.store.get(kid, 10.0) == []


def test_lookups_yield_a_node_again_when_its_complete_record_turns_up() -> None:
    core = lone_core()
    op = core.get_providers(KEY, 2, 0.0)
    op.take()
    op._found([fetching(A, 1, 2), fetching(A, 2, 2), fetching(B, 1, 2)])
    assert op.take() == [fetching(A, 1, 2), fetching(B, 1, 2)]
    op._found([A, A, B])
    assert op.take() == [A, B]  # upgraded, each once; the limit counts nodes, not records


def test_inflight_records_over_the_simulated_network() -> None:
    net = SimNet(10, seed=21, request_timeout=0.2, inflight_ttl=10.0)
    net.run(5.0)
    cores = list(net.cores.values())
    fetcher, asker = cores[2], cores[7]
    op = fetcher.provide_inflight(KEY, 100, 1000, net.now)
    assert op is not None
    net.pump(fetcher.bound)
    net.run(1.0)
    assert op.done
    found = net.providers(asker, KEY)
    me = Provider(fetcher.node_id, *fetcher.bound, fetcher.config.registry_port)
    assert found == [fetching(me, 100, 1000)]
    assert net.providers(fetcher, KEY)[0] == fetching(me, 100, 1000)  # own record first
    # Progress grows with each announce.
    fetcher.provide_inflight(KEY, 600, 1000, net.now)
    net.pump(fetcher.bound)
    net.run(1.0)
    assert net.providers(asker, KEY) == [fetching(me, 600, 1000)]
    # Not renewed: the records held elsewhere lapse (the fetcher, asked, still names itself).
    net.run(10.0)
    assert not any(c.store.get(key_id(KEY), net.now) for c in cores)
    assert net.providers(asker, KEY) in ([], [fetching(me, 600, 1000)])
    fetcher.withdraw_inflight([KEY])  # aborted
    assert net.providers(asker, KEY) == []
    # Commit: complete records.
    fetcher.provide_inflight(KEY, 900, 1000, net.now)
    net.pump(fetcher.bound)
    net.run(1.0)
    fetcher.provide([KEY], net.now)
    net.pump(fetcher.bound)
    net.run(1.0)
    assert net.providers(asker, KEY) == [me]
    assert fetcher.provide_inflight(KEY, 1, 2, net.now) is None  # complete already
    assert net.providers(fetcher, KEY) == [me]


def test_an_inflight_announce_is_one_datagram_per_holder() -> None:
    net = SimNet(6, seed=22, request_timeout=0.2)
    net.run(5.0)
    fetcher = list(net.cores.values())[1]
    before = fetcher.counters.requests_sent
    op = fetcher.provide_inflight(KEY, 0, 10, net.now)
    assert op is not None
    net.pump(fetcher.bound)
    net.run(1.0)
    holders = sum(1 for c in net.cores.values() if c.store.get(key_id(KEY), net.now))
    assert holders == 5  # every other node (k = 20 > 5)
    assert fetcher.counters.requests_sent - before >= holders
    [record] = {p for c in net.cores.values() for p in c.store.get(key_id(KEY), net.now)}
    assert record.progress == (0, 10)
    message = AddInflight(key_id(KEY), "127.0.0.1", 1, 1, 0, 0)
    assert decode(encode(Envelope(1, fetcher.node_id, message))).message == message


def _sent_by(net: SimNet, address: tuple[str, int]) -> Counter[str]:
    assert net.sent is not None
    return Counter(type(decode(cmd.data).message).__name__ for a, cmd in net.sent if a == address)


def test_renewed_progress_goes_to_the_holders_found_last_without_a_lookup() -> None:
    """A download renews its record every few seconds: the nodes the first announce's
    lookup found get the new progress directly, for a third of the record's TTL; past
    that, or once the download ended, a lookup finds them again."""
    net = SimNet(8, seed=23, request_timeout=0.2, inflight_ttl=30.0)
    net.run(5.0)
    fetcher = list(net.cores.values())[3]
    others = [c for c in net.cores.values() if c is not fetcher]

    def announce(done: int) -> Counter[str]:
        net.sent = []
        assert fetcher.provide_inflight(KEY, done, 1000, net.now) is not None
        net.pump(fetcher.bound)
        net.run(1.0)
        return _sent_by(net, fetcher.bound)

    first = announce(100)
    assert first["FindNode"] > 0 and first["AddInflight"] == len(others)
    renewed = announce(400)  # 1 s later
    assert renewed == Counter({"AddInflight": len(others)})
    assert all(c.store.get(key_id(KEY), net.now)[0].progress == (400, 1000) for c in others)
    net.run(9.0)  # 11 s after the lookup: past 30 / 3
    assert announce(700)["FindNode"] > 0
    fetcher.withdraw_inflight([KEY])  # ended: a new download of the key looks up again
    assert announce(10)["FindNode"] > 0
