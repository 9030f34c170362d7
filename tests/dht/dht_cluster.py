"""Helpers for tests that run real DHT nodes on loopback UDP (127.0.0.x only)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import trio

from dht import Bootstrapper, DhtNode, NodeConfig, StaticBootstrapper


@dataclass
class Member:
    node: DhtNode
    scope: trio.CancelScope

    def stop(self) -> None:
        self.scope.cancel()


async def run_member(
    config: NodeConfig,
    bootstrapper: Bootstrapper | None,
    *,
    task_status: trio.TaskStatus[Member],
) -> None:
    with trio.CancelScope() as scope:
        async with DhtNode.open(config, bootstrapper) as node:
            task_status.started(Member(node, scope))
            await trio.sleep_forever()


def free_port(hosts: int = 1) -> int:
    """A UDP port free on 127.0.0.1 .. 127.0.0.<hosts>."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            for i in range(hosts):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((f"127.0.0.{i + 1}", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


async def start_cluster(
    nursery: trio.Nursery, n: int, *, port: int | None = None, **config: Any
) -> list[Member]:
    """n nodes on 127.0.0.1 .. 127.0.0.n, all on the same UDP port, joined and settled."""
    port = port or free_port(n)
    config.setdefault("request_timeout", 0.3)
    members = [
        await nursery.start(
            run_member,
            NodeConfig(bind_host="127.0.0.1", bind_port=port, registry_port=5000, **config),
            None,
        )
    ]
    seed = StaticBootstrapper([f"127.0.0.1:{port}"])
    for i in range(1, n):
        node_config = NodeConfig(
            bind_host=f"127.0.0.{i + 1}", bind_port=port, registry_port=5000 + i, **config
        )
        members.append(await nursery.start(run_member, node_config, seed))
    with trio.fail_after(30):
        for member in members[1:]:
            await member.node.wait_ready()
        await settle(members)
    return members


def traffic(members: list[Member]) -> int:
    return sum(m.node.stats.datagrams_in for m in members)


async def settle(members: list[Member], quiet: float = 0.1) -> None:
    """Wait until no datagram has moved for `quiet` seconds."""
    before = traffic(members)
    while True:
        await trio.sleep(quiet)
        now = traffic(members)
        if now == before:
            return
        before = now


async def providers_of(node: DhtNode, key: str, limit: int = 100) -> list[Any]:
    return [p async for p in node.get_providers(key, limit=limit)]
