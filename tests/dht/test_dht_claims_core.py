"""Claims through the node core on fake time: CLAIM / CLAIM_ANSWER / RELEASE, the
arbiter (the closest node that answers), lapse on the core's timers, bounds."""

from __future__ import annotations

import math
import random

from dht_peer import Peer
from test_dht_node_core import SimNet, answer, far_contacts, lone_core, sends

from dht.claims import ClaimAnswer, Lost, Refused, Won
from dht.core import NodeCore, Send, WakeAt
from dht.ids import id_to_int, key_id
from dht.messages import (
    CLAIM_LOST,
    ClaimReply,
    ClaimRequest,
    Contact,
    FindNode,
    Nodes,
    Provider,
    Release,
    Released,
    decode,
)
from dht.operations import ArbiterOp

KEY = "sha256:" + "ab" * 32


def run_op(net: SimNet, core: NodeCore, op: ArbiterOp, limit: float = 5.0) -> None:
    net.pump(core.bound)
    end = net.now + limit
    while not op.done and net.now < end:
        net.run(0.01)
    assert op.done


def claim(net: SimNet, core: NodeCore, key: str = KEY, lease: float = 5.0) -> ClaimAnswer:
    op = core.claim(key, lease, net.now)
    run_op(net, core, op)
    assert op.answer is not None and not isinstance(op.answer, bool)
    return op.answer


def release(net: SimNet, core: NodeCore, key: str = KEY) -> bool | None:
    op = core.release(key, net.now)
    run_op(net, core, op)
    assert not isinstance(op.answer, Won | Lost | Refused)
    return op.answer


def by_distance(net: SimNet, key: str) -> list[NodeCore]:
    kid = id_to_int(key_id(key))
    return sorted(net.cores.values(), key=lambda c: id_to_int(c.node_id) ^ kid)


def record(core: NodeCore) -> Provider:
    return Provider(core.node_id, core.bound[0], core.bound[1], core.config.registry_port)


def joined(n: int = 10, seed: int = 11) -> SimNet:
    net = SimNet(n, seed=seed, request_timeout=0.2)
    net.run(5.0)
    assert all(core.ready() for core in net.cores.values())
    return net


def test_first_claimant_wins_and_the_second_learns_the_holder() -> None:
    net = joined()
    arbiter, *others = by_distance(net, KEY)
    a, b = others[3], others[6]
    first = claim(net, a)
    assert isinstance(first, Won)
    assert first.claim.holder == record(a)  # as the arbiter saw it
    assert math.isclose(first.claim.expires, net.now + 5.0, abs_tol=0.05)
    assert arbiter.claims.get(key_id(KEY), net.now) is not None
    assert sum(len(c.claims) for c in net.cores.values()) == 1  # one arbiter only
    second = claim(net, b)
    assert isinstance(second, Lost)
    assert second.claim.holder == record(a)
    assert 4.0 < second.claim.expires - net.now <= 5.0


def test_a_claim_lapses_after_its_lease_on_the_arbiters_timer() -> None:
    net = joined(seed=12)
    arbiter, *others = by_distance(net, KEY)
    a, b = others[1], others[2]
    assert isinstance(claim(net, a, lease=2.0), Won)
    assert len(arbiter.claims) == 1
    net.run(2.1)
    assert len(arbiter.claims) == 0  # dropped by tick, not only when asked
    taken = claim(net, b)
    assert isinstance(taken, Won) and taken.claim.holder == record(b)
    assert isinstance(claim(net, a), Lost)


def test_renewing_is_claiming_again() -> None:
    net = joined(seed=13)
    _, *others = by_distance(net, KEY)
    a, b = others[0], others[4]
    first = claim(net, a, lease=2.0)
    net.run(1.5)
    renewed = claim(net, a, lease=2.0)
    assert isinstance(first, Won) and isinstance(renewed, Won)
    assert renewed.claim.expires > first.claim.expires + 1.0
    net.run(1.0)  # past the first lease, within the renewed one
    assert isinstance(claim(net, b), Lost)


def test_release_frees_the_claim_and_only_the_holder_can() -> None:
    net = joined(seed=14)
    _, *others = by_distance(net, KEY)
    a, b = others[2], others[5]
    assert isinstance(claim(net, a), Won)
    assert isinstance(claim(net, b), Lost)
    assert release(net, b) is False  # not the holder
    assert isinstance(claim(net, b), Lost)
    assert release(net, a) is True
    assert isinstance(claim(net, b), Won)
    assert release(net, a, "sha256:never-claimed") is False


def test_the_closest_node_arbitrates_locally() -> None:
    net = joined(seed=15)
    arbiter, other, *_ = by_distance(net, KEY)
    op = arbiter.claim(KEY, 5.0, net.now)
    before = arbiter.counters.requests_sent
    run_op(net, arbiter, op)
    assert isinstance(op.answer, Won)
    assert op.answer.claim.holder == record(arbiter)
    # Only the lookup went out: no CLAIM to anyone else.
    assert all(len(c.claims) == 0 for c in net.cores.values() if c is not arbiter)
    assert arbiter.counters.requests_sent - before >= 1
    lost = claim(net, other)
    assert isinstance(lost, Lost) and lost.claim.holder == record(arbiter)
    assert release(net, arbiter) is True
    assert isinstance(claim(net, other), Won)


def test_a_dead_arbiter_is_passed_over_for_the_next_closest() -> None:
    net = joined(seed=16)
    arbiter, second, *others = by_distance(net, KEY)
    a, b = others[0], others[3]
    assert isinstance(claim(net, a), Won)
    net.dead.add(arbiter.bound)  # the arbiter dies holding a's claim
    # b's lookup finds the arbiter silent (or its CLAIM times out, see the
    # by-hand test below): the next closest arbitrates.
    taken = claim(net, b)
    assert isinstance(taken, Won) and taken.claim.holder == record(b)
    assert second.claims.get(key_id(KEY), net.now) is not None
    lost = claim(net, a)
    assert isinstance(lost, Lost) and lost.claim.holder == record(b)


def test_a_slow_arbiter_is_still_the_arbiter() -> None:
    # Slower than the lookup's stall deadline (50 ms), faster than a request timeout
    # (200 ms here): an overloaded node, not a dead one. Passing it over would let a
    # claimant that saw it slow and one that saw it fast win at different arbiters.
    net = joined(seed=16)
    arbiter, second, *others = by_distance(net, KEY)
    a, b = others[0], others[3]
    net.slow[arbiter.bound] = 0.1
    assert isinstance(claim(net, a), Won)
    assert arbiter.claims.get(key_id(KEY), net.now) is not None
    net.slow.clear()
    lost = claim(net, b)
    assert isinstance(lost, Lost) and lost.claim.holder == record(a)
    assert second.claims.get(key_id(KEY), net.now) is None


def test_claims_are_refused_when_the_arbiter_is_full() -> None:
    net = joined(seed=17)
    arbiter, *others = by_distance(net, KEY)
    arbiter.claims.max_claims = 0
    refused = claim(net, others[2])
    assert isinstance(refused, Refused)
    arbiter.claims.max_claims = 10
    arbiter.claims.max_per_claimant = 1
    assert isinstance(claim(net, others[2]), Won)
    other_key = next(
        f"sha256:{i:064x}"
        for i in range(10_000)
        if by_distance(net, f"sha256:{i:064x}")[0] is arbiter
    )
    assert isinstance(claim(net, others[2], other_key), Refused)  # one per claimant
    assert isinstance(claim(net, others[3], other_key), Won)


def test_a_lone_node_arbitrates_for_itself() -> None:
    core = lone_core()
    core.tick(0.0)  # asks for peers (and gets none): nothing else is due before 5 s
    core.take_commands()
    op = core.claim(KEY, 2.0, 0.0)
    assert op.done and isinstance(op.answer, Won)
    assert op.answer.claim.expires == 2.0
    commands = core.take_commands()
    assert not [c for c in commands if isinstance(c, Send)]  # nothing sent
    assert WakeAt(2.0) in commands  # the lease is on the core's timer
    assert core.claims.next_expiry() == 2.0
    core.tick(2.0)
    assert len(core.claims) == 0


def test_the_arbiter_op_retries_the_next_candidate_on_timeout() -> None:
    """The pure retry, by hand: FIND_NODE, CLAIM to the closest, timeout, CLAIM to the next."""
    core = lone_core(request_timeout=0.5, stall_timeout=0.05, alpha=3)
    kid = key_id(KEY)
    rng = random.Random(8)
    assert kid[0] >= 8  # so contacts one low bit away from the key are closer than OWN
    contacts = [
        Contact(bytes([kid[0] ^ (1 << i)]) + kid[1:], c.host, c.port)
        for i, c in enumerate(far_contacts(rng, 3))
    ]
    for c in contacts:
        core.routing.observe(c, 0.0)
    op = core.claim(KEY, 5.0, 0.0)
    finds = sends(core)
    assert {decode(s.data).message for s in finds} == {FindNode(kid)}
    by_address = {(c.host, c.port): c for c in contacts}
    for request in finds:
        answer(core, request, by_address[request.address].node_id, Nodes(()), 0.01)
    ranked = sorted(contacts, key=lambda c: id_to_int(c.node_id) ^ id_to_int(kid))
    [first] = sends(core)
    assert first.address == (ranked[0].host, ranked[0].port)
    assert decode(first.data).message == ClaimRequest(kid, 5.0, *core.bound, 5000)
    core.tick(0.51)  # the closest never answers
    [retry] = sends(core)
    assert retry.address == (ranked[1].host, ranked[1].port)
    holder = Provider(ranked[2].node_id, "127.0.9.9", 5001, 5009)
    answer(core, retry, ranked[1].node_id, ClaimReply(CLAIM_LOST, holder, 3.0), 0.6)
    assert op.done and isinstance(op.answer, Lost)
    assert op.answer.claim.holder == holder
    assert op.answer.claim.expires == 3.6  # on the claimant's clock
    # A release goes to the arbiter that answered, not the dead one.
    rel = core.release(KEY, 0.7)
    [request] = sends(core)
    assert request.address == retry.address
    assert decode(request.data).message == Release(kid, *core.bound, 5000)
    answer(core, request, ranked[1].node_id, Released(False), 0.71)
    assert rel.done and rel.answer is False


def test_the_claimant_is_the_datagrams_source() -> None:
    core = lone_core()  # no cluster key: the source, proven by a cookie, is the claimant
    kid = key_id(KEY)
    sender = bytes([0x80]) * 16
    peer = Peer(sender, "127.0.0.9", 6001)
    message = peer.ask(core, ClaimRequest(kid, 5.0, "10.9.9.9", 9, 5007), 0.0).message
    assert isinstance(message, ClaimReply)
    assert message.holder == Provider(sender, "127.0.0.9", 6001, 5007)
    # The same id from elsewhere cannot release it.
    elsewhere = Peer(sender, "127.0.0.10", 6001)
    release = Release(kid, "127.0.0.9", 6001, 5007)
    assert elsewhere.ask(core, release, 1.0).message == Released(False)
    assert peer.ask(core, release, 1.0).message == Released(True)
