"""A large body's `sendfile` handed to a worker thread: one blocking call, no loop wakeups.

Served from Trio's loop, a body wakes the loop once per socket buffer's worth (about
1,600 times a second at 3 GB/s on loopback), and with eight fast readers that is what
the server spends beyond nginx. A blocking `sendfile` of the whole range lets the
kernel refill the socket as it drains, with the GIL released for the whole body (a
blocking loop in a thread that took the GIL back after every chunk collapsed from
1,048 to 109 MiB/s when the event loop was busy).

The thread works on its own duplicates of both descriptors, so whatever happens to the
task (cancelled, the connection closed) it never writes to a descriptor number that was
reused. A stall is the socket's `SO_SNDTIMEO`: no byte accepted for `stall_timeout`
(noticed between one and two timeouts after the last byte: a call that sent some
bytes and then waited out the timeout returns those, and the next call waits again).
Cancelling the task shuts the socket down, which ends the thread's call at once.
At most `BODY_THREADS` bodies at a time (`body_threads()`); the others are served
from the loop.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from dataclasses import dataclass, field

import trio

from mirror.server.sendfailures import PeerStalled, SourceShort

# A smaller body costs the loop only a few wakeups: not worth a thread hand-off.
OFFLOAD_MIN = 16 * 1024 * 1024
BODY_THREADS = 16

_threads: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("body_threads")


def body_threads() -> trio.CapacityLimiter:
    """This run's limiter of bodies sent from worker threads."""
    try:
        return _threads.get()
    except LookupError:
        limiter = trio.CapacityLimiter(BODY_THREADS)
        _threads.set(limiter)
        return limiter


def offload_applies(length: int) -> bool:
    return length >= OFFLOAD_MIN and body_threads().available_tokens > 0


class OffloadUnavailable(Exception):
    """No descriptor to spare for the thread's copies, or the socket refused its
    options: nothing was sent, use the loop."""


@dataclass(slots=True)
class _Job:
    out_fd: int
    in_fd: int
    offset: int
    length: int
    stall_timeout: float
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _owned: bool = False

    def own(self) -> bool:
        """Take the descriptors (to close them): true for the first caller only. The
        thread takes them as it starts; a task cancelled before that, instead."""
        with self._lock:
            if self._owned:
                return False
            self._owned = True
            return True

    def close(self) -> None:
        os.close(self.out_fd)
        os.close(self.in_fd)

    def run(self) -> int:
        """Send every byte, blocking; closes both descriptors in every case."""
        if not self.own():
            return 0  # the task was cancelled before this thread began: nothing to do
        try:
            remaining, offset = self.length, self.offset
            while remaining:
                try:
                    sent = os.sendfile(self.out_fd, self.in_fd, offset, remaining)
                except BlockingIOError:
                    raise PeerStalled(f"no progress for {self.stall_timeout}s") from None
                if sent == 0:
                    raise SourceShort(f"file ended {remaining} bytes early")
                offset += sent
                remaining -= sent
            return self.length
        finally:
            self.close()


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


async def send_file_offloaded(
    sock: trio.socket.SocketType, file_fd: int, offset: int, length: int, stall_timeout: float
) -> int:
    """`length` bytes of `file_fd` from `offset`, by one worker thread; returns the count."""
    try:
        out_fd = os.dup(sock.fileno())
    except OSError as error:
        raise OffloadUnavailable(str(error)) from None
    try:
        in_fd = os.dup(file_fd)
    except OSError as error:
        os.close(out_fd)
        raise OffloadUnavailable(str(error)) from None
    job = _Job(out_fd, in_fd, offset, length, stall_timeout)
    try:
        # The descriptors share one open socket: blocking mode and the timeout hold for
        # both until restored below, and the task does not touch the socket meanwhile.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(stall_timeout))
        os.set_blocking(out_fd, True)
    except OSError as error:
        job.close()
        raise OffloadUnavailable(str(error)) from None
    try:
        return await trio.to_thread.run_sync(
            job.run, abandon_on_cancel=True, limiter=body_threads()
        )
    except trio.Cancelled:
        if job.own():
            job.close()  # cancelled before the thread began
        else:
            # The thread may still be inside sendfile: end its call, it then closes them.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.set_blocking(sock.fileno(), False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(0.0))
