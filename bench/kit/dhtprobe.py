"""Ask a running cluster's DHT who provides some keys, the way a mirror's lookup would.

A throwaway DHT node joins through the given routers, runs one provider lookup
per key and leaves; it provides nothing. Synchronous (its own `trio.run`), for
tests and benchmarks that hold the cluster in the calling thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import trio

from dht import DhtNode, NodeConfig, StaticBootstrapper


def providers_of(
    routers: Sequence[str],
    keys: Sequence[str],
    *,
    host: str = "127.0.0.250",
    cluster_key: bytes | None = None,
    timeout: float = 10.0,
) -> dict[str, set[str]]:
    """`key -> {"host:registry_port", ...}` of every complete and in-flight provider
    found for each key (an empty set when nobody provides it)."""

    async def ask() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {key: set() for key in keys}
        config = NodeConfig(bind_host=host, bind_port=0, cluster_key=cluster_key)
        with trio.fail_after(timeout):
            async with DhtNode.open(config, StaticBootstrapper(routers)) as node:
                await node.wait_ready()
                for key in keys:
                    async with contextlib.aclosing(node.get_providers(key)) as providers:  # type: ignore[type-var]
                        async for provider in providers:
                            found[key].add(f"{provider.host}:{provider.registry_port}")
        return found

    return trio.run(ask)
