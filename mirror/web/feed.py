"""A bounded live feed: the hot path publishes, websocket listeners follow.

Publishing is synchronous and O(1): append to a ring, bump a sequence number,
wake whoever is parked. Listeners keep their own position; one that falls more
than a ring behind (a slow websocket reader) skips ahead and is told how many
events it missed. Nothing a listener does can make `publish` wait.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Batch(Generic[T]):
    events: list[tuple[int, T]]  # (sequence number, event), oldest first
    dropped: int  # events published since the cursor that are no longer in the ring
    cursor: int  # pass this back to get what comes next


class EventFeed(Generic[T]):
    def __init__(self, size: int = 512) -> None:
        self._ring: deque[tuple[int, T]] = deque(maxlen=size)
        self._lot = trio.lowlevel.ParkingLot()
        self.published = 0

    def publish(self, event: T) -> None:
        self.published += 1
        self._ring.append((self.published, event))
        if self._lot:
            self._lot.unpark_all()

    def recent(self, limit: int) -> list[tuple[int, T]]:
        if limit <= 0:
            return []
        return list(self._ring)[-limit:]

    def since(self, cursor: int, limit: int | None = None) -> Batch[T]:
        """Events after `cursor`; with `limit`, the newest `limit` (the rest count as dropped)."""
        missed = max(self.published - cursor, 0)
        available = min(missed, len(self._ring))
        if limit is not None:
            available = min(available, limit)
        events = list(self._ring)[len(self._ring) - available :] if available else []
        return Batch(events, missed - available, self.published)

    async def wait(self, cursor: int) -> None:
        """Return once something was published after `cursor`."""
        if self.published > cursor:
            await trio.lowlevel.checkpoint()
            return
        await self._lot.park()
