"""Hostile peers against real nodes on loopback UDP (issue 12, item 4): a captured sealed
ADD_PROVIDER resent from elsewhere, late, or to another node; amplification towards an
address that never proved it receives."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio
from dht_cluster import Member, free_port, run_member, settle, start_cluster

import dht.node
from dht import NodeConfig, Provider, StaticBootstrapper, key_id
from dht.messages import (
    ADD_PROVIDER,
    Envelope,
    GetProviders,
    Providers,
    Retry,
    decode,
    encode,
)

KEY = "sha256:" + "5e" * 32
CLUSTER_KEY = b"the cluster key of this test"
STRANGER_ID = bytes(range(200, 216))


async def udp_socket(host: str, port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((host, port))
    return sock


async def wait_until(predicate: Callable[[], object]) -> None:
    """Poll on the real clock, for at most three seconds."""
    for _ in range(300):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not reached in 3 s")


def record_of(member: Member) -> Provider:
    node = member.node
    return Provider(node.node_id, *node.address, node.config.registry_port)


def records(member: Member) -> list[Provider]:
    return member.node.core.store.get(key_id(KEY), trio.current_time())


def tap(member: Member) -> list[tuple[bytes, tuple[str, int]]]:
    """Every datagram `member` receives, as it came off the socket."""
    seen: list[tuple[bytes, tuple[str, int]]] = []
    core = member.node.core
    receive = core.receive

    def recording(data: bytes, host: str, port: int, now: float) -> None:
        seen.append((data, (host, port)))
        receive(data, host, port, now)

    core.receive = recording  # type: ignore[method-assign]
    return seen


async def test_a_captured_add_provider_resent_from_elsewhere_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port(6)
    async with trio.open_nursery() as nursery:
        a, b, c = await start_cluster(nursery, 3, port=port, cluster_key=CLUSTER_KEY)
        heard = tap(b)
        await a.node.provide([KEY])
        await settle([a, b, c])
        assert records(b) == [record_of(a)]
        [captured, *_] = [d for d, src in heard if src == a.node.address and d[2] == ADD_PROVIDER]
        attacker = await udp_socket("127.0.0.66", port)

        # Resent to the node it was sent to: a replay, refused.
        await attacker.sendto(captured, b.node.address)
        await wait_until(lambda: len(heard) and heard[-1][1][0] == "127.0.0.66")
        await trio.sleep(0.1)
        assert records(b) == [record_of(a)]  # was: the record moved to 127.0.0.66
        [entry] = [p for p in b.node.peers() if p.node_id == a.node.node_id]
        assert (entry.host, entry.port) == a.node.address  # and so did the routing entry
        assert b.node.stats.dropped_replayed == 1

        # Resent to a node that never saw it: stored, naming its author.
        seed = StaticBootstrapper([f"127.0.0.1:{port}"])
        config = NodeConfig(bind_host="127.0.0.4", bind_port=port, cluster_key=CLUSTER_KEY)
        d = await nursery.start(run_member, config, seed)
        await d.node.wait_ready()
        await settle([a, b, c, d])
        assert records(d) == []
        await attacker.sendto(captured, d.node.address)
        await wait_until(lambda: records(d))
        assert records(d) == [record_of(a)]

        # Resent once the window has passed (the wall clock a minute on): refused.
        config = NodeConfig(bind_host="127.0.0.5", bind_port=port, cluster_key=CLUSTER_KEY)
        e = await nursery.start(run_member, config, seed)
        await e.node.wait_ready()
        offset = dht.node._clock_offset
        monkeypatch.setattr(dht.node, "_clock_offset", lambda: offset() + 60.0)
        e.node.core.clock_offset += 60.0  # at once; the timer loop keeps it there
        await attacker.sendto(captured, e.node.address)
        await wait_until(lambda: e.node.stats.dropped_stale >= 1)
        assert records(e) == []
        attacker.close()
        nursery.cancel_scope.cancel()


async def test_an_unverified_address_gets_no_answer_larger_than_its_request() -> None:
    async with trio.open_nursery() as nursery:
        members = await start_cluster(nursery, 12)
        for m in members[4:10]:
            await m.node.provide([KEY])
        await settle(members)
        target = members[0].node
        port = target.address[1]
        kid = key_id(KEY)
        # The smallest GET_PROVIDERS there is, from an address the node never verified
        # (a spoofed source would be one): each answer must be no larger than it.
        spoofed = await udp_socket("127.0.0.50", port)
        sent = received = 0
        for rid in range(1, 51):  # a bounded burst
            request = encode(Envelope(rid, STRANGER_ID, GetProviders(kid, 20)))
            await spoofed.sendto(request, target.address)
            sent += len(request)
        with trio.move_on_after(0.5):
            while True:
                data, _ = await spoofed.recvfrom(2048)
                received += len(data)
        await wait_until(lambda: target.stats.dropped_unverified >= 50)
        with trio.move_on_after(0.1):  # what a slow machine sent late
            while True:
                data, _ = await spoofed.recvfrom(2048)
                received += len(data)
        assert target.stats.dropped_unverified == 50
        assert received > 0  # answered (each with a RETRY and a cookie), ...
        assert received / sent <= 1.0, f"amplification {received / sent:.1f}x"  # was 12.6x

        # A requester that follows the protocol gets the whole answer: padded first,
        # then small with the cookie it was given.
        request = encode(Envelope(99, STRANGER_ID, GetProviders(kid, 20)), 1200, 1200)
        await spoofed.sendto(request, target.address)
        with trio.fail_after(2):
            data, _ = await spoofed.recvfrom(2048)
        reply = decode(data)
        assert isinstance(reply.message, Providers) and len(reply.message.providers) == 6
        assert len(data) <= len(request) and reply.cookie is not None
        small = encode(Envelope(100, STRANGER_ID, GetProviders(kid, 20), reply.cookie))
        await spoofed.sendto(small, target.address)
        with trio.fail_after(2):
            data, _ = await spoofed.recvfrom(2048)
        assert isinstance(decode(data).message, Providers) and len(data) > 5 * len(small)
        # A cookie is worth its address only.
        other = await udp_socket("127.0.0.51", port)
        await other.sendto(small, target.address)
        with trio.fail_after(2):
            data, _ = await other.recvfrom(2048)
        assert isinstance(decode(data).message, Retry) and len(data) <= len(small)
        spoofed.close()
        other.close()
        nursery.cancel_scope.cancel()
