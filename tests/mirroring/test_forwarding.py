"""Which download a node passes on to peers while it still receives it (pure)."""

from __future__ import annotations

import os
from collections import Counter

from mirror.mirroring.forwarding import forward_rank, forwarded

DIGESTS = [f"sha256:{i:064x}" for i in range(3)]


def test_a_node_passes_on_the_lowest_ranked_of_its_downloads() -> None:
    node = b"n" * 20
    first = min(DIGESTS, key=lambda digest: forward_rank(node, digest))
    assert forwarded(node, DIGESTS, []) == {first}
    assert forwarded(node, reversed(DIGESTS), []) == {first}  # order does not matter


def test_claimed_downloads_are_passed_on_whatever_their_rank() -> None:
    node = b"n" * 20
    last = max(DIGESTS, key=lambda digest: forward_rank(node, digest))
    assert forwarded(node, DIGESTS, [last]) == {last}
    # Two claims: both (nobody else has their bytes yet).
    assert forwarded(node, DIGESTS, DIGESTS[:2]) == set(DIGESTS[:2])


def test_nothing_received_nothing_passed_on() -> None:
    assert forwarded(b"n" * 20, [], []) == frozenset()


def test_the_layers_spread_evenly_over_the_nodes() -> None:
    counts = Counter(next(iter(forwarded(os.urandom(20), DIGESTS, []))) for _ in range(3000))
    assert set(counts) == set(DIGESTS)
    assert all(800 <= count <= 1200 for count in counts.values()), counts


def test_the_rank_depends_on_the_node_and_the_digest() -> None:
    assert forward_rank(b"a" * 20, DIGESTS[0]) == forward_rank(b"a" * 20, DIGESTS[0])
    assert forward_rank(b"a" * 20, DIGESTS[0]) != forward_rank(b"b" * 20, DIGESTS[0])
    assert forward_rank(b"a" * 20, DIGESTS[0]) != forward_rank(b"a" * 20, DIGESTS[1])
