"""Claims between real nodes on loopback UDP (127.0.0.x), on the real clock."""

from __future__ import annotations

import trio
from dht_cluster import start_cluster

from dht import ClaimAnswer, DhtNode, Lost, Provider, Won, key_id
from dht.ids import id_to_int

KEY = "sha256:" + "cd" * 32


def record(node: DhtNode) -> Provider:
    host, port = node.address
    return Provider(node.node_id, host, port, node.config.registry_port)


async def test_two_concurrent_claimants_one_wins_and_the_other_learns_the_winner() -> None:
    async with trio.open_nursery() as nursery:
        members = await start_cluster(nursery, 5)
        kid = id_to_int(key_id(KEY))
        nodes = sorted((m.node for m in members), key=lambda n: id_to_int(n.node_id) ^ kid)
        arbiter, a, b = nodes[0], nodes[3], nodes[4]  # both claimants ask over the wire
        answers: dict[int, ClaimAnswer] = {}

        async def claim(index: int, node: DhtNode) -> None:
            answers[index] = await node.claim(KEY, 5.0)

        with trio.fail_after(10):
            async with trio.open_nursery() as claimants:
                claimants.start_soon(claim, 0, a)
                claimants.start_soon(claim, 1, b)
        won = [i for i, x in answers.items() if isinstance(x, Won)]
        lost = [i for i, x in answers.items() if isinstance(x, Lost)]
        assert len(won) == 1 and len(lost) == 1, answers
        winner, loser = (a, b) if won == [0] else (b, a)
        assert answers[won[0]].claim.holder == record(winner)  # type: ignore[union-attr]
        assert answers[lost[0]].claim.holder == record(winner)  # type: ignore[union-attr]
        assert len(arbiter.core.claims) == 1

        # The cold-start flow: the winner announces its download in flight, the
        # loser finds it with its progress, then the complete record on commit.
        with trio.fail_after(10):
            await winner.provide_inflight(KEY, 4096, 65536)
            found = [p async for p in loser.get_providers(KEY)]
            assert [(p.node_id, p.progress) for p in found] == [(winner.node_id, (4096, 65536))]
            await winner.provide([KEY])
            found = [p async for p in loser.get_providers(KEY)]
            assert found == [record(winner)]
            await winner.withdraw([KEY])

        # Renewing keeps it; releasing hands it to the next claimant.
        with trio.fail_after(10):
            assert isinstance(await winner.claim(KEY, 5.0), Won)
            assert isinstance(await loser.claim(KEY, 5.0), Lost)
            await winner.release(KEY)
            taken = await loser.claim(KEY, 5.0)
        assert isinstance(taken, Won) and taken.claim.holder == record(loser)
        # The arbiter claiming for itself decides locally, against the same table.
        with trio.fail_after(10):
            local = await arbiter.claim(KEY, 5.0)
        assert isinstance(local, Lost) and local.claim.holder == record(loser)
        nursery.cancel_scope.cancel()
