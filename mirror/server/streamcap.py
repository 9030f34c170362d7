"""How many blob bodies one node streams to peers at a time (the fan-out's bound).

A node already streaming `limit` bodies to peers answers the next peer busy
(503), so that peer takes another source, often one that is itself still
receiving the blob: the cluster forms a tree instead of every node pulling
from the first holder. The bound is per node, not per blob: a source's uplink
is shared by everything it sends (`python -m bench coldstart-sim` measured a
per-node cap of 3 at 1.7x the ideal distribution time, a cap of 3 per blob at
3.0x, in the model where each node fetched the layers in its own order).
Requests from the node's own containerd are never capped.

A full node asked for a blob by a peer that will pass it on (`forwarding.py`)
makes room: it ends its newest stream of that blob to a peer that will not,
which resumes from another source. Those streams are the cap's "leaves".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import trio

from mirror.server.response import Body


class StreamCap:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._streams: Counter[str] = Counter()
        self._total = 0
        self.refused = 0
        self.preempted = 0
        # key -> streams to peers that do not pass the blob on, oldest first.
        self._leaves: dict[str, list[object]] = {}

    def __len__(self) -> int:
        """Streams running now, over every key."""
        return self._total

    def streams(self, key: str) -> int:
        return self._streams[key]

    @property
    def full(self) -> bool:
        return self.limit > 0 and self._total >= self.limit

    def acquire(self, key: str, *, force: bool = False) -> bool:
        """A stream of `key` counted; refused past the limit unless `force`d (it still
        counts then, and so holds back the next peer)."""
        if self.full and not force:
            self.refused += 1
            return False
        self._streams[key] += 1
        self._total += 1
        return True

    def release(self, key: str) -> None:
        self._streams[key] -= 1
        self._total -= 1
        if self._streams[key] <= 0:
            del self._streams[key]

    def leaf_started(self, key: str, stream: object) -> None:
        self._leaves.setdefault(key, []).append(stream)

    def leaf_ended(self, key: str, stream: object) -> None:
        leaves = self._leaves.get(key)
        if leaves is not None and stream in leaves:
            leaves.remove(stream)
            if not leaves:
                del self._leaves[key]

    def leaf_to_end(self, key: str) -> object | None:
        """Full: the stream to end so that a peer passing `key` on gets its slot, the
        newest of `key` to a peer that does not (it has the least to resume)."""
        if not self.full:
            return None
        leaves = self._leaves.get(key)
        return leaves[-1] if leaves else None

    def make_room(self, key: str) -> bool:
        """End the stream `leaf_to_end` names; True when one was ended (its slot is free)."""
        stream = self.leaf_to_end(key)
        if not isinstance(stream, CappedBody):
            return False
        stream.preempt()
        return True

    def hold(self, key: str, body: Body, *, passes_on: bool = True) -> CappedBody:
        """`body`, counted against `key` (already acquired) until it is closed; a leaf
        (ended to make room) unless the peer `passes_on` the blob."""
        capped = CappedBody(body, key, self, body.length)
        if not passes_on:
            self.leaf_started(key, capped)
        return capped


class Preempted(Exception):
    """The stream was ended to make room for a peer that passes the blob on."""


@dataclass(slots=True, eq=False)
class CappedBody:
    inner: Body
    key: str
    cap: StreamCap
    length: int
    released: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None:
        with self.scope:
            await self.inner.send(sock, stall_timeout)
        if self.scope.cancelled_caught:
            raise Preempted("ended for a peer that passes this blob on")

    def preempt(self) -> None:
        """Give the slot up now and end the body where it is (the peer sees a reset)."""
        if self.released:
            return
        self.cap.preempted += 1
        self._release()
        self.scope.cancel()

    def close(self) -> None:
        self.inner.close()
        self._release()

    def _release(self) -> None:
        if not self.released:
            self.released = True
            self.cap.release(self.key)
            self.cap.leaf_ended(self.key, self)
