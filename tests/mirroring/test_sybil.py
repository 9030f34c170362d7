"""Records that lead nowhere (a node that is gone, or hundreds forged under many
node ids from one address) must not hide a real holder: refused connections are
not retries, and one host's records past its first two wait until every other
host has been tried. Real loopback sockets; only the DHT is a stand-in."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from dht import Provider
from mirror.mirroring.mirror import MirrorEvent, MirrorSettings, PeerMirror
from mirror.mirroring.providers import ProviderCache
from mirror.server.listener import RegistryServer
from mirror.server.localstore import LocalStore
from mirror.server.registry import RegistryHandler
from tests.mirroring.test_race import BLOB, FixedProviders, NoTags, _body_through, _content_store
from tests.mirroring.test_trickle import _get


def _record(host: str, port: int, n: int) -> Provider:
    return Provider(node_id=n.to_bytes(16, "big"), host=host, udp_port=1, registry_port=port)


def _closed_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def _holder(nursery: trio.Nursery, root: Path, host: str) -> int:
    server = RegistryServer(RegistryHandler(LocalStore(_content_store(root), NoTags())))
    await nursery.start(server.run, host, 0)
    return int(server.addresses[0][1])


async def _served_by(records: list[Provider]) -> tuple[bytes, list[MirrorEvent]]:
    events: list[MirrorEvent] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cache = ProviderCache(FixedProviders(records), is_self=lambda p: False)
            await nursery.start(cache.run)
            mirror = PeerMirror(cache, MirrorSettings(), on_event=events.append)
            response = await _get(mirror, {})
            body = await _body_through(response)
            nursery.cancel_scope.cancel()
    return body, events


async def test_hundreds_of_records_from_one_address_do_not_hide_the_holder(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        holder = await _holder(nursery, tmp_path, "127.0.0.2")
        sybil = "127.0.0.9"
        records = [_record(sybil, _closed_port(sybil), n) for n in range(256)]
        body, events = await _served_by([*records, _record("127.0.0.2", holder, 999)])
        nursery.cancel_scope.cancel()
    assert body == BLOB
    assert [(event.outcome, event.peer) for event in events] == [("peer", f"127.0.0.2:{holder}")]


async def test_records_of_nodes_that_are_gone_are_not_retries(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        holder = await _holder(nursery, tmp_path, "127.0.0.2")
        gone = [f"127.0.0.{n}" for n in range(10, 18)]  # 8 nodes, nobody listening
        records = [_record(host, _closed_port(host), n) for n, host in enumerate(gone)]
        body, events = await _served_by([*records, _record("127.0.0.2", holder, 999)])
        nursery.cancel_scope.cancel()
    assert body == BLOB
    assert [(event.outcome, event.peer) for event in events] == [("peer", f"127.0.0.2:{holder}")]
