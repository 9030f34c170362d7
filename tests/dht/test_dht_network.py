"""Real nodes on loopback UDP (127.0.0.x), on the real clock: lookups, churn, buckets.

Re-provide, expiry and refresh take minutes: they run on fake time against
the core (test_dht_node_core.py), not here (autojump with real sockets can
jump past a timeout while a reply sits in a socket buffer)."""

from __future__ import annotations

import random
from contextlib import aclosing
from pathlib import Path

import trio
import trio.testing
from dht_cluster import free_port, providers_of, run_member, settle, start_cluster

from dht import DhtNode, LookupStats, NodeConfig, Provider, StaticBootstrapper, key_id
from dht.ids import bucket_index, id_to_int


async def test_nodes_share_one_port_on_distinct_loopback_addresses() -> None:
    async with trio.open_nursery() as nursery:
        members = await start_cluster(nursery, 6)
        ports = {m.node.address[1] for m in members}
        assert len(ports) == 1
        assert [m.node.address[0] for m in members] == [f"127.0.0.{i}" for i in range(1, 7)]
        for m in members:
            assert m.node.ready()
            assert len(m.node.peers()) == 5
            assert m.node.stats.routing_table_size == 5
        nursery.cancel_scope.cancel()


async def test_lookups_find_every_provider() -> None:
    rng = random.Random(1)
    async with trio.open_nursery() as nursery:
        members = await start_cluster(nursery, 24)
        port = members[0].node.address[1]
        sharers = rng.sample(members, 8)
        for m in sharers:
            await m.node.provide(["sha256:shared"])
        owners: dict[str, DhtNode] = {}
        for i in range(120):
            owner = members[i % len(members)].node
            owners[f"registry.local/app{i}:v1"] = owner
        for owner in {id(o): o for o in owners.values()}.values():
            await owner.provide([k for k, o in owners.items() if o is owner])
        await settle(members)

        expected = {
            Provider(m.node.node_id, m.node.address[0], port, m.node.config.registry_port)
            for m in sharers
        }
        for m in members:
            found = await providers_of(m.node, "sha256:shared")
            assert set(found) == expected
            assert len(found) == len(expected)  # no duplicates
            if m in sharers:
                assert found[0].node_id == m.node.node_id  # own record first

        for key, owner in owners.items():
            asker = rng.choice(members).node
            found = await providers_of(asker, key)
            assert [p.node_id for p in found] == [owner.node_id]
            assert found[0].registry_port == owner.config.registry_port
        assert await providers_of(members[0].node, "sha256:nobody") == []
        nursery.cancel_scope.cancel()


async def test_get_providers_streams_and_honours_limit() -> None:
    async with trio.open_nursery() as nursery:
        members = await start_cluster(nursery, 16, k=4)  # records on 4 nodes only
        for m in members[8:]:
            await m.node.provide(["sha256:popular"])
        await settle(members)
        kid = key_id("sha256:popular")
        now = trio.current_time()
        asker = next(m.node for m in members[:8] if not m.node.core.store.get(kid, now))
        assert len(await providers_of(asker, "sha256:popular", limit=3)) == 3
        assert len(await providers_of(asker, "sha256:popular")) == 8
        await settle(members)  # introductions to the nodes first met are answered
        before = asker.core.table.in_flight
        stats = LookupStats()
        async with aclosing(asker.get_providers("sha256:popular", limit=50, stats=stats)) as it:
            async for _ in it:
                break  # the mirror starts fetching from the first one
        assert asker.core.table.in_flight == before  # closing forgot what was in flight
        assert stats.messages >= 1
        nursery.cancel_scope.cancel()


async def test_lookups_succeed_with_10_and_30_percent_of_nodes_gone() -> None:
    rng = random.Random(2)
    async with trio.open_nursery() as nursery:
        members = await start_cluster(nursery, 40, request_timeout=0.2)
        owners = {f"sha256:{i:064x}": members[i % 40] for i in range(80)}
        for m in members:
            await m.node.provide([k for k, o in owners.items() if o is m])
        await settle(members)
        alive = list(members)
        rng.shuffle(alive)
        for fraction in (0.1, 0.3):
            while len(alive) > 40 * (1 - fraction):
                alive.pop().stop()
            live_keys = [k for k, o in owners.items() if o in alive]
            for key in rng.sample(live_keys, 25):
                asker = rng.choice([m for m in alive if m is not owners[key]])
                found = await providers_of(asker.node, key)
                assert owners[key].node.node_id in [p.node_id for p in found], (fraction, key)
        nursery.cancel_scope.cancel()


async def test_a_node_that_leaves_is_replaced_in_buckets() -> None:
    async with trio.open_nursery() as nursery:
        # k = 2: the far buckets overflow, so replacement caches fill up.
        members = await start_cluster(nursery, 16, k=2, request_timeout=0.2)
        watcher = members[0].node
        own = id_to_int(watcher.node_id)
        by_id = {m.node.node_id: m for m in members}
        leaving = None
        for contact in watcher.peers():
            index = bucket_index(own, id_to_int(contact.node_id))
            same_bucket = [
                c
                for c in watcher.core.routing.replacement_contacts()
                if bucket_index(own, id_to_int(c.node_id)) == index
            ]
            if same_bucket:
                leaving, bucket = contact, index
                break
        assert leaving is not None, "no bucket with replacements"
        by_id[leaving.node_id].stop()
        await trio.sleep(0.05)
        in_bucket_before = [
            c for c in watcher.peers() if bucket_index(own, id_to_int(c.node_id)) == bucket
        ]
        assert len(in_bucket_before) == 2
        await watcher.find_node(leaving.node_id)  # asks it, gets no answer
        assert leaving.node_id not in watcher.core.routing
        in_bucket_after = [
            c for c in watcher.peers() if bucket_index(own, id_to_int(c.node_id)) == bucket
        ]
        assert len(in_bucket_after) == 2  # refilled from the replacement cache
        nursery.cancel_scope.cancel()


async def test_restarted_node_keeps_its_id(tmp_path: Path) -> None:
    port = free_port()
    config = NodeConfig(bind_host="127.0.0.1", bind_port=port, data_dir=tmp_path)
    async with DhtNode.open(config) as node:
        first = node.node_id
    async with DhtNode.open(config) as node:
        assert node.node_id == first
    assert (tmp_path / "dht-node-id").read_text().strip() == first.hex()


async def test_provide_before_ready_is_announced_once_ready() -> None:
    port = free_port(2)
    async with trio.open_nursery() as nursery:
        seed = StaticBootstrapper([f"127.0.0.1:{port}"])
        late = await nursery.start(
            run_member,
            NodeConfig(
                bind_host="127.0.0.2",
                bind_port=port,
                bootstrap_backoff=0.05,
                bootstrap_backoff_max=0.1,
            ),
            seed,
        )
        await late.node.provide(["sha256:early"])
        assert not late.node.ready()
        await trio.sleep(0.3)  # retried with backoff, nobody there yet
        assert not late.node.ready()
        first = await nursery.start(
            run_member, NodeConfig(bind_host="127.0.0.1", bind_port=port), None
        )
        with trio.fail_after(5):
            await late.node.wait_ready()
        await settle([first, late])
        found = await providers_of(first.node, "sha256:early")
        assert [p.node_id for p in found] == [late.node.node_id]
        nursery.cancel_scope.cancel()
