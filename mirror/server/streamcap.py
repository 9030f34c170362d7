"""How many blob bodies one node streams to peers at a time (the fan-out's bound).

A node already streaming `limit` bodies to peers answers the next peer busy
(503), so that peer takes another source, often one that is itself still
receiving the blob: the cluster forms a tree instead of every node pulling
from the first holder. The bound is per node, not per blob: a source's uplink
is shared by everything it sends (`python -m bench coldstart-sim` measured a
per-node cap of 3 at 1.7x the ideal distribution time, a cap of 3 per blob at
3.0x). Requests from the node's own containerd are never capped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import trio

from mirror.server.response import Body


class StreamCap:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._streams: Counter[str] = Counter()
        self._total = 0
        self.refused = 0

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

    def hold(self, key: str, body: Body) -> CappedBody:
        """`body`, counted against `key` (already acquired) until it is closed."""
        return CappedBody(body, key, self, body.length)


@dataclass(slots=True)
class CappedBody:
    inner: Body
    key: str
    cap: StreamCap
    length: int
    released: bool = False

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None:
        await self.inner.send(sock, stall_timeout)

    def close(self) -> None:
        self.inner.close()
        if not self.released:
            self.released = True
            self.cap.release(self.key)
