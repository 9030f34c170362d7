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

from mirror.server.io import send_all
from mirror.server.pacing import PACED_CHUNK, Pacer
from mirror.server.sendfailures import SourceShort

# A growing file is read, checked, then sent (not sendfile'd): see send().
READ_CHUNK = 1024 * 1024


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
    # The bytes on disk are no longer the download's (not merely cut short).
    damaged: bool = False


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

    def step(self, size: int, links: int, now: float, hole: int | None = None) -> FollowStep:
        """`size` and `links` are the open file's `st_size` and `st_nlink` at `now`;
        `hole`, where its first hole starts (`size` or None: none)."""
        if self.position >= self.end:
            return Finished()
        if size < self._last_size:
            return SourceLost(f"truncated to {size} bytes")
        if hole is not None and hole < size:
            # containerd writes `data` in order and never skips: a hole means it was
            # truncated and written past since, too fast for the size to show it.
            return SourceLost(
                f"a hole at {hole} of {size} bytes: truncated, then written past", damaged=True
            )
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


def first_hole(fd: int, size: int) -> int:
    """Where the file's first hole starts; `size` when it has none (or the file
    system cannot tell: then it is all data)."""
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE)
    except OSError:
        return size


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
    on_damaged: Callable[[], None] | None = None

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None:
        follower = GrowthFollower(
            self.offset,
            self.offset + self.length,
            trio.current_time(),
            stall_timeout=self.growth_stall_timeout,
            poll_interval=self.poll_interval,
        )
        chunk = PACED_CHUNK if self.pacer is not None else READ_CHUNK
        while True:
            step = self._look(follower)
            if isinstance(step, Finished):
                return
            if isinstance(step, SendUpTo):
                position = follower.position
                data = os.pread(self.fd, min(step.end - position, chunk), position)
                # Read, then look again before sending: containerd never rewrites what
                # it wrote, so a truncation before the read still shows now (a shorter
                # file, or a hole once written past). sendfile could not be checked so:
                # it reads the pages while it sends them.
                after = self._look(follower)
                if data and not isinstance(after, SourceLost):
                    await send_all(sock, data, stall_timeout=stall_timeout)
                    follower.sent(len(data))
                    if self.pacer is not None:
                        await self.pacer.sent(len(data))
                    continue
                step = after
            if isinstance(step, SourceLost):
                if step.damaged and self.on_damaged is not None:
                    self.on_damaged()
                raise SourceShort(step.reason)
            if isinstance(step, WaitUntil):
                with trio.move_on_at(step.deadline):
                    await self.wait_changed()

    def _look(self, follower: GrowthFollower) -> FollowStep:
        info = os.fstat(self.fd)
        hole = first_hole(self.fd, info.st_size)
        return follower.step(info.st_size, info.st_nlink, trio.current_time(), hole)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
