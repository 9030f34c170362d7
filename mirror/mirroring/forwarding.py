"""Which blob a node passes on to peers while it still receives it (pure).

containerd fetches a manifest's layers in order, a few at a time, so in a mass
cold start every node receives the same layers at once. If each node streamed
to peers whatever it was asked for first, the first layer asked for would take
every stream slot of its receivers, and the trees of the other layers could not
grow (`python -m bench coldstart-sim`, 1,000 nodes: 3.8x the ideal time). So a
node still receiving passes on one of its downloads only: the one it claimed
(fetched from the upstream, the root of that layer's tree; all of them, should
it hold several claims), else the one its own ranking puts first. The ranking
hashes the node's id with the digest, so the layers spread evenly over the
nodes, and every node can tell which it forwards from its own ingests alone. A
node holding a blob whole serves it to anyone.

A puller that will forward what it asks for says so (`registry.FORWARDS_HEADER`); a full
source then makes room for it by ending its newest stream of that blob to a
puller that will not (who resumes elsewhere with `Range`): each layer's tree
grows through nodes that pass it on, as SplitStream's trees do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def forward_rank(node_id: bytes, digest: str) -> bytes:
    """A node's preference among digests: lowest first, spread evenly by the hash."""
    return hashlib.blake2b(node_id + digest.encode(), digest_size=8).digest()


def forwarded(node_id: bytes, receiving: Iterable[str], claimed: Iterable[str]) -> frozenset[str]:
    """The digests this node passes on while it receives them: those it claimed (no
    other node has their bytes yet), else the lowest ranked of those `receiving`."""
    mine = frozenset(claimed)
    if mine:
        return mine
    first = min(receiving, key=lambda digest: forward_rank(node_id, digest), default=None)
    return frozenset() if first is None else frozenset((first,))
