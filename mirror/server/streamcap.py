"""How many peers one node streams one blob to at a time (the fan-out's bound).

A node that already streams a digest to `per_key` peers answers the next one
busy (503), so that peer takes another source, often one that is itself still
receiving the blob: the cluster forms a tree instead of every node pulling
from the first holder. Requests from the node's own containerd are never capped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import trio

from mirror.server.response import Body


class StreamCap:
    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._streams: Counter[str] = Counter()
        self.refused = 0

    def __len__(self) -> int:
        """Streams running now, over every key."""
        return sum(self._streams.values())

    def streams(self, key: str) -> int:
        return self._streams[key]

    def acquire(self, key: str) -> bool:
        if self.per_key > 0 and self._streams[key] >= self.per_key:
            self.refused += 1
            return False
        self._streams[key] += 1
        return True

    def release(self, key: str) -> None:
        self._streams[key] -= 1
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
