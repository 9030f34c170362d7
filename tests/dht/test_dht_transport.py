"""The UDP shell: reply matching, hostile datagrams, cluster key, in-flight bound."""

from __future__ import annotations

import itertools
import os
import random
import socket
import time
from collections.abc import Callable

import pytest
import trio
import trio.testing
from dht_cluster import free_port, run_member
from hypothesis import given, settings
from hypothesis import strategies as st

from dht import DhtNode, NodeConfig, StaticBootstrapper
from dht.auth import Authenticator
from dht.core import NodeCore, Send
from dht.messages import (
    MAX_DATAGRAM,
    AddProvider,
    Envelope,
    FindNode,
    GetProviders,
    Message,
    Nodes,
    Ping,
    Pong,
    decode,
    encode,
    reply_room,
)
from dht.transport import canonical_host, sockaddr_for

PEER_ID = bytes(range(100, 116))


async def udp_socket(host: str, port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((host, port))
    return sock


async def wait_until(predicate: Callable[[], object]) -> None:
    """Poll on the real clock, for at most two seconds."""
    for _ in range(400):
        if predicate():
            return
        await trio.sleep(0.005)
    raise AssertionError("condition not reached in 2 s")


_nonces = itertools.count(1)


def envelope_bytes(request_id: int, message: Message, key: bytes | None = None) -> bytes:
    """A datagram as a peer without a cookie sends it: padded to the answer's size."""
    auth = Authenticator(key)
    room = reply_room(message, MAX_DATAGRAM - auth.overhead)
    payload = encode(Envelope(request_id, PEER_ID, message), pad_to=0 if message.IS_REPLY else room)
    return auth.seal(payload, time.time(), next(_nonces))


async def test_replies_must_match_address_id_and_type() -> None:
    port = free_port(3)
    config = NodeConfig(bind_host="127.0.0.1", bind_port=port, request_timeout=3.0)
    async with DhtNode.open(config) as node, trio.open_nursery() as nursery:
        peer = await udp_socket("127.0.0.2", port)
        impostor = await udp_socket("127.0.0.3", port)
        result: list[bool] = []

        async def ping() -> None:
            result.append(await node.ping(("127.0.0.2", port)))

        nursery.start_soon(ping)
        with trio.fail_after(2):
            data, source = await peer.recvfrom(2048)
        request = decode(data)
        assert isinstance(request.message, Ping)
        rid = request.request_id

        await peer.sendto(envelope_bytes(rid ^ 1, Pong("127.0.0.1", port)), source)  # wrong id
        await impostor.sendto(envelope_bytes(rid, Pong("127.0.0.1", port)), source)  # wrong address
        await peer.sendto(envelope_bytes(rid, Nodes(())), source)  # wrong type
        await wait_until(lambda: node.stats.dropped_unsolicited == 3)
        await trio.sleep(0.05)
        assert result == []  # still waiting for the real answer
        assert PEER_ID not in node.core.routing

        await peer.sendto(envelope_bytes(rid, Pong("127.0.0.1", port)), source)
        await wait_until(lambda: result)
        assert result == [True]
        assert node.core.routing.get(PEER_ID) is not None
        await peer.sendto(envelope_bytes(rid, Pong("127.0.0.1", port)), source)  # replayed
        await wait_until(lambda: node.stats.dropped_unsolicited == 4)
        peer.close()
        impostor.close()


def garbage(rng: random.Random, valid: list[bytes]) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, MAX_DATAGRAM))
    data = bytearray(rng.choice(valid))
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(len(data))
        if kind == 1:
            data[pos] ^= rng.randrange(1, 256)
        else:
            del data[pos:]
            if not data:
                break
    return bytes(data)


async def test_receive_loop_survives_hostile_datagrams() -> None:
    port = free_port(2)
    rng = random.Random(3)
    valid = [
        envelope_bytes(1, m)
        for m in (Ping(), FindNode(bytes(16)), GetProviders(bytes(16), 5), Nodes(()))
    ]
    async with DhtNode.open(NodeConfig(bind_host="127.0.0.1", bind_port=port)) as node:
        attacker = await udp_socket("127.0.0.2", port)
        sent = 0
        for _ in range(400):
            await attacker.sendto(garbage(rng, valid), ("127.0.0.1", port))
            sent += 1
        await attacker.sendto(b"\x94" + b"\x00" * 1400, ("127.0.0.1", port))  # oversized
        sent += 1
        await wait_until(lambda: node.stats.datagrams_in == sent)
        stats = node.stats
        assert stats.dropped_oversized == 1
        assert stats.dropped_malformed > 300
        assert node.core.counters.handler_errors == 0
        assert len(node.core.routing) <= 1  # one address holds one contact, whatever ids it claims
        # Still serving: a well-formed ping gets its pong.
        with trio.fail_after(2):
            while True:
                await attacker.sendto(envelope_bytes(777, Ping()), ("127.0.0.1", port))
                data, _ = await attacker.recvfrom(2048)
                reply = decode(data)
                if reply.request_id == 777:
                    break
        assert reply.message == Pong("127.0.0.2", port)
        attacker.close()


class _RecordingCore:
    """The node core alone, fed datagrams as the receive loop would, on fake time."""

    def __init__(self) -> None:
        config = NodeConfig(bind_host="127.0.0.1", bind_port=5001)
        self.core = NodeCore(config, bytes(16), ("127.0.0.1", 5001), 0.0, rng=random.Random(1))
        self.requests = 0

    def receive(self, data: bytes) -> None:
        self.core.receive(data, "127.0.0.9", 4000, 0.0)
        replies = [c for c in self.core.take_commands() if isinstance(c, Send) and not c.request_id]
        self.requests += len(replies)


@pytest.fixture(scope="module")
def recording() -> _RecordingCore:
    return _RecordingCore()


VALID = [
    encode(Envelope(9, PEER_ID, m, cookie), pad_to=128)
    for m in (Ping(), FindNode(bytes(16)), AddProvider("::1", 1, 2, (bytes(16),)), Pong("::1", 1))
    for cookie in (None, b"c" * 8)
]


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=1400),
        st.tuples(st.sampled_from(VALID), st.integers(0, 60), st.binary(max_size=4)).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :]
        ),
    )
)
def test_receive_path_never_raises(recording: _RecordingCore, data: bytes) -> None:
    c = recording.core.counters

    def dropped() -> int:
        return c.dropped_malformed + c.dropped_oversized + c.dropped_unsolicited

    before = (c.datagrams_in, dropped(), c.dropped_unverified)
    requests = recording.requests
    recording.receive(data)  # the receive loop's entry
    assert c.datagrams_in == before[0] + 1
    # Each datagram is dropped and counted, or answered (maybe with a RETRY: the
    # source is unverified), or left unanswered and counted (even a RETRY is larger).
    answered = recording.requests - requests
    unverified = c.dropped_unverified - before[2]
    assert (dropped() - before[1]) + answered + (unverified if not answered else 0) == 1
    assert c.handler_errors == 0
    if len(data) > MAX_DATAGRAM:
        assert dropped() == before[1] + 1


async def test_cluster_key_drops_unsigned_and_wrongly_signed_datagrams() -> None:
    port = free_port(5)
    key, other = b"cluster secret", b"another secret"
    async with trio.open_nursery() as nursery:

        def config(i: int, cluster_key: bytes | None) -> NodeConfig:
            return NodeConfig(
                bind_host=f"127.0.0.{i}",
                bind_port=port,
                cluster_key=cluster_key,
                request_timeout=0.2,
                bootstrap_backoff=0.05,
                bootstrap_backoff_max=0.1,
            )

        seed = StaticBootstrapper([f"127.0.0.1:{port}"])
        a = await nursery.start(run_member, config(1, key), None)
        b = await nursery.start(run_member, config(2, key), seed)
        stranger = await nursery.start(run_member, config(3, other), seed)
        open_node = await nursery.start(run_member, config(4, None), seed)
        with trio.fail_after(5):
            await b.node.wait_ready()
        await trio.sleep(0.5)
        assert not stranger.node.ready()
        assert not open_node.node.ready()
        assert a.node.stats.dropped_unauthenticated >= 2
        assert {c.node_id for c in a.node.peers()} == {b.node.node_id}

        # The stranger and the open node keep retrying their bootstrap against
        # a (and bump its counter): probe b, whom nobody but us sends bad datagrams.
        raw = await udp_socket("127.0.0.5", port)
        before = b.node.stats.dropped_unauthenticated
        await raw.sendto(envelope_bytes(1, Ping()), ("127.0.0.2", port))  # unsigned
        await raw.sendto(envelope_bytes(2, Ping(), other), ("127.0.0.2", port))  # wrong key
        await wait_until(lambda: b.node.stats.dropped_unauthenticated == before + 2)
        await raw.sendto(envelope_bytes(3, Ping(), key), ("127.0.0.2", port))  # signed
        with trio.fail_after(2):
            data, _ = await raw.recvfrom(2048)
        payload = Authenticator(key).open(data, time.time())
        assert isinstance(payload, bytes)
        assert decode(payload).request_id == 3
        raw.close()
        nursery.cancel_scope.cancel()


def test_requests_in_flight_are_bounded() -> None:
    config = NodeConfig(bind_host="127.0.0.1", bind_port=5001, max_in_flight=2, request_timeout=0.3)
    core = NodeCore(config, bytes(16), ("127.0.0.1", 5001), 0.0, rng=random.Random(2))
    core.take_commands()
    ops = [core.ping(("127.0.0.2", 5001), 0.0) for _ in range(3)]
    sent = [c for c in core.take_commands() if isinstance(c, Send)]
    assert len(sent) == 2  # the third waits for a slot
    assert core.table.in_flight == 2
    core.tick(0.3)
    assert [op.done for op in ops] == [True, True, False]  # timed out, slots freed
    assert not any(op.answered for op in ops[:2])
    assert len([c for c in core.take_commands() if isinstance(c, Send)]) == 1
    core.cancel(ops[2], 0.35)
    assert core.table.in_flight == 0


def test_addresses_are_canonical() -> None:
    assert canonical_host("::ffff:127.0.0.2") == "127.0.0.2"
    assert canonical_host("0:0::1") == "::1"
    assert canonical_host("127.0.0.1") == "127.0.0.1"


def test_unique_request_ids() -> None:
    # Request ids come from os.urandom: a reply cannot be guessed from a counter.
    ids = {int.from_bytes(os.urandom(8), "big") for _ in range(1000)}
    assert len(ids) == 1000


def test_ipv6_socket_maps_ipv4_destinations() -> None:
    assert sockaddr_for(False, "127.0.0.2", 5001) == ("::ffff:127.0.0.2", 5001)
    assert sockaddr_for(False, "::1", 5001) == ("::1", 5001)
    assert sockaddr_for(True, "::1", 5001) is None  # unreachable from an IPv4 socket
    assert sockaddr_for(True, "127.0.0.2", 5001) == ("127.0.0.2", 5001)


async def test_late_reply_is_not_delivered_but_proves_the_peer_alive() -> None:
    port = free_port(2)
    config = NodeConfig(bind_host="127.0.0.1", bind_port=port, request_timeout=0.05)
    async with DhtNode.open(config) as node:
        peer = await udp_socket("127.0.0.2", port)
        assert not await node.ping(("127.0.0.2", port))  # nobody answered in time
        with trio.fail_after(2):
            data, source = await peer.recvfrom(2048)
        rid = decode(data).request_id
        assert PEER_ID not in node.core.routing
        await peer.sendto(envelope_bytes(rid, Pong("127.0.0.1", port)), source)
        await wait_until(lambda: node.core.table.counters.late_replies == 1)
        assert node.core.routing.get(PEER_ID) is not None
        await peer.sendto(envelope_bytes(rid, Pong("127.0.0.1", port)), source)  # once only
        await wait_until(lambda: node.stats.dropped_unsolicited == 1)
        peer.close()
