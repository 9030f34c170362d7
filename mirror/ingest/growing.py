"""Serving a blob while containerd is still writing it: follow `data` until `total`.

`GrowthFollower` is the pure core: fed what `fstat` says of the open file and
the time, it says how far may be sent now, when to look again, or that the
source is lost (truncated, unlinked before the end, or silent for the stall
timeout). `GrowingFileBody` is the thin shell: `sendfile` what is there, then
wait for the watcher's next change or a short poll, whichever comes first.

The fd stays valid across commit (containerd renames `data` into `blobs/`, same
inode), so a response that started on a growing file ends on the committed blob.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from mirror.server.io import SourceShort, send_file
from mirror.server.pacing import Pacer


@dataclass(frozen=True)
class SendUpTo:
    """Bytes up to this file offset (exclusive) are on disk and may be sent."""

    end: int


@dataclass(frozen=True)
class WaitUntil:
    """Nothing new to send: look again at this time (or on the next change)."""

    deadline: float


@dataclass(frozen=True)
class SourceLost:
    reason: str


@dataclass(frozen=True)
class Finished:
    pass


FollowStep = SendUpTo | WaitUntil | SourceLost | Finished


class GrowthFollower:
    """Send `[start, end)` of a file that grows toward it; decisions only, no I/O."""

    def __init__(
        self, start: int, end: int, now: float, *, stall_timeout: float, poll_interval: float
    ) -> None:
        self.position = start
        self.end = end
        self._stall_timeout = stall_timeout
        self._poll_interval = poll_interval
        self._last_size = -1
        self._last_growth = now

    def sent(self, n: int) -> None:
        self.position += n

    def step(self, size: int, links: int, now: float) -> FollowStep:
        """`size` and `links` are the open file's `st_size` and `st_nlink` at `now`."""
        if self.position >= self.end:
            return Finished()
        if size < self._last_size:
            return SourceLost(f"truncated to {size} bytes")
        if size > self._last_size:
            if self._last_size >= 0:
                self._last_growth = now
            self._last_size = size
        if size > self.position:
            return SendUpTo(min(size, self.end))
        if links == 0:
            return SourceLost(f"removed at {size} of {self.end} bytes")
        if now - self._last_growth >= self._stall_timeout:
            return SourceLost(f"no growth for {self._stall_timeout:g}s at {size} bytes")
        return WaitUntil(min(now + self._poll_interval, self._last_growth + self._stall_timeout))


@dataclass(slots=True)
class GrowingFileBody:
    """`length` bytes from `offset` of a growing file, for the hot path's Body protocol."""

    fd: int
    offset: int
    length: int
    wait_changed: Callable[[], Awaitable[None]]
    growth_stall_timeout: float = 10.0
    poll_interval: float = 0.05
    pacer: Pacer | None = None

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None:
        follower = GrowthFollower(
            self.offset,
            self.offset + self.length,
            trio.current_time(),
            stall_timeout=self.growth_stall_timeout,
            poll_interval=self.poll_interval,
        )
        while True:
            info = os.fstat(self.fd)
            step = follower.step(info.st_size, info.st_nlink, trio.current_time())
            if isinstance(step, Finished):
                return
            if isinstance(step, SourceLost):
                raise SourceShort(step.reason)
            if isinstance(step, SendUpTo):
                count = step.end - follower.position
                await send_file(
                    sock,
                    self.fd,
                    follower.position,
                    count,
                    stall_timeout=stall_timeout,
                    pacer=self.pacer,
                )
                follower.sent(count)
                continue
            with trio.move_on_at(step.deadline):
                await self.wait_changed()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
