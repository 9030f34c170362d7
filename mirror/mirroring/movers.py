"""Moving a body's bytes from a peer's socket to the client's, and proving them.

Three ways, chosen by the relay (relay.py) per body:
- `splice`: peer socket -> pipe -> client socket inside the kernel (`os.splice`),
  the bytes never entering Python. Only for bodies that are not verified on the
  way (ranges).
- `tee_verified`: a whole blob, whose bytes must hash to its digest. Spliced as
  above, and `tee(2)` duplicates each pipeful into a second pipe, which a worker
  thread reads and hashes while the loop sends the first one on: one copy per
  byte (the hash's read) instead of the three of a copy relay. The last
  `TAIL` bytes are copied and go out only once the hash matches.
- `copy`/`copy_verified`: `recv_into` reusable buffers, then send them on (and
  hash them on a worker thread). Used when splice is off, and when the process
  is out of descriptors for pipes.
Every mover returns the bytes it delivered, or raises `PeerFailure` (with the
bytes delivered before the peer's side broke: the relay resumes from there),
`ClientGone`, or `DigestMismatch`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass

import trio

from mirror.mirroring.peer import PeerError
from mirror.mirroring.ratefloor import RateFloor
from mirror.server.io import BodyIntegrityError, send_all
from mirror.server.sendfailures import PeerStalled

COPY_BUFFER = 1024 * 1024
PIPE_SIZE = 1024 * 1024
CHECKPOINT_BYTES = 8 * 1024 * 1024
TAIL = COPY_BUFFER  # the end of a verified body, copied so that it can be held back
HASH_PIPES = 2  # B pipes: a pipeful is hashed while the next one is teed
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ClientGone(ConnectionError):
    """The client stopped taking bytes; nothing to resume."""


class DigestMismatch(BodyIntegrityError):
    """The relayed bytes do not hash to the digest asked for: the end is never sent
    (`moved`: the bytes of this call that did reach the client)."""

    def __init__(self, message: str, moved: int = 0) -> None:
        super().__init__(message)
        self.moved = moved


class PeerFailure(Exception):
    """The peer's side broke after `moved` bytes reached the client."""

    def __init__(self, cause: Exception, moved: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.moved = moved


async def to_client(sock: trio.socket.SocketType, data: bytes | memoryview, stall: float) -> None:
    try:
        await send_all(sock, data, stall_timeout=stall)  # type: ignore[arg-type]
    except (OSError, PeerStalled) as exc:
        raise ClientGone(str(exc)) from exc


@dataclass(slots=True)
class PeerSide:
    """The peer's socket, its stall timeout and its rate floor: every wait for it."""

    sock: trio.socket.SocketType
    stall: float
    floor: RateFloor | None

    async def wait(self) -> None:
        """Until the peer's socket is readable; PeerStalled past the stall timeout, or
        when waiting ends a window of the floor short of its quota."""
        floor = self.floor
        if floor is None:
            with trio.move_on_after(self.stall) as scope:
                await trio.lowlevel.wait_readable(self.sock)
        else:
            started = trio.current_time()
            with trio.move_on_after(floor.wait_limit(self.stall)) as scope:
                await trio.lowlevel.wait_readable(self.sock)
            floor.waited(trio.current_time() - started)
            if not floor.met():
                raise PeerStalled(f"peer sent less than {floor.min_rate:.0f} bytes/s")
        if scope.cancelled_caught:
            raise PeerStalled(f"peer sent nothing for {self.stall}s")

    def received(self, count: int) -> None:
        if self.floor is not None:
            self.floor.received(count)


async def copy(
    peer: PeerSide, client: trio.socket.SocketType, remaining: int, client_stall: float
) -> int:
    buffer = memoryview(bytearray(min(COPY_BUFFER, max(remaining, 1))))
    moved = 0
    while moved < remaining:
        try:
            received = await fill(peer, buffer[: min(len(buffer), remaining - moved)])
        except (PeerError, PeerStalled, OSError) as exc:
            raise PeerFailure(exc, moved) from None
        await to_client(client, buffer[:received], client_stall)
        moved += received
    return moved


async def copy_verified(
    peer: PeerSide,
    client: trio.socket.SocketType,
    early: bytes,
    remaining: int,
    hasher: hashlib._Hash,
    expected_hex: str,
    client_stall: float,
) -> int:
    """`copy`, hashing every byte; the chunk that ends the body goes out only if the
    hash matches (each call's `remaining` ends where the whole body does).

    Each chunk is hashed on a worker thread (hashlib lets go of the GIL) while the
    next one is read, alternating between two buffers: on this project's machine
    hashing on the event loop held one relay to about 850 MiB/s."""
    hashing = ThreadedHash(hasher)
    buffers = [memoryview(bytearray(min(COPY_BUFFER, max(remaining, 1)))) for _ in range(2)]
    moved = 0
    turn = 0
    try:
        while moved < remaining:
            if early:
                chunk: bytes | memoryview = early
                early = b""
            else:
                buffer = buffers[turn]
                turn ^= 1
                try:
                    got = await fill(peer, buffer[: min(len(buffer), remaining - moved)])
                except (PeerError, PeerStalled, OSError) as exc:
                    raise PeerFailure(exc, moved) from None
                chunk = buffer[:got]
            await hashing.update(chunk)  # waits for the chunk before, so `buffer` is free
            if moved + len(chunk) == remaining:
                await hashing.wait()
                require_digest(hasher, expected_hex, "relayed", moved)
            await to_client(client, chunk, client_stall)
            moved += len(chunk)
        return moved
    finally:
        # The hasher must hold exactly the bytes sent before a resume goes on with it.
        with trio.CancelScope(shield=True):
            await hashing.wait()


def require_digest(hasher: hashlib._Hash, expected_hex: str, what: str, moved: int) -> None:
    """DigestMismatch (`moved`: the bytes already delivered) unless the hash matches."""
    if hasher.hexdigest() != expected_hex:
        raise DigestMismatch(f"{what} bytes hash to {hasher.name}:{hasher.hexdigest()}", moved)


class ThreadedHash:
    """`hasher.update` on a worker thread, one chunk at a time, in order."""

    def __init__(self, hasher: hashlib._Hash) -> None:
        self._hasher = hasher
        self._token = trio.lowlevel.current_trio_token()
        self._done: trio.Event | None = None

    async def wait(self) -> None:
        """Until the chunk handed over last is in the hash."""
        if self._done is not None:
            await self._done.wait()
            self._done = None

    async def update(self, chunk: bytes | memoryview) -> None:
        await self.wait()
        done = self._done = trio.Event()
        hasher, token = self._hasher, self._token

        def deliver(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        trio.lowlevel.start_thread_soon(lambda: hasher.update(chunk), deliver)


async def fill(peer: PeerSide, view: memoryview) -> int:
    """Read into `view`: wait for the first bytes, then take what is already there."""
    filled = 0
    fd = peer.sock.fileno()
    while filled < len(view):
        try:
            got = os.readv(fd, [view[filled:]])
        except BlockingIOError:
            if filled:
                break
            await peer.wait()
            continue
        if got == 0:
            if filled:
                break
            raise PeerError("peer closed the connection mid-body")
        filled += got
    peer.received(filled)
    return filled


def open_pipe() -> tuple[int, int] | None:
    """A pipe for splice, enlarged; None when the process is out of descriptors (the
    body is then copied: a pipe costs two)."""
    try:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return None
        raise
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


def _close_pipes(pipes: list[tuple[int, int]]) -> None:
    for read_end, write_end in pipes:
        os.close(read_end)
        os.close(write_end)


async def splice(
    pipe: tuple[int, int],
    peer: PeerSide,
    client: trio.socket.SocketType,
    remaining: int,
    client_stall: float,
) -> int:
    """Move `remaining` bytes through `pipe` (closed at the end)."""
    read_end, write_end = pipe
    client_fd = client.fileno()
    moved = 0  # delivered to the client
    in_pipe = 0
    since_checkpoint = 0
    try:
        while moved < remaining:
            want = remaining - moved - in_pipe
            if want and in_pipe < PIPE_SIZE:
                try:
                    in_pipe += await _peer_to_pipe(
                        peer, write_end, min(want, PIPE_SIZE - in_pipe), in_pipe == 0
                    )
                except (PeerError, PeerStalled, OSError) as exc:
                    await _drain_pipe(read_end, client, in_pipe, client_stall)
                    raise PeerFailure(exc, moved + in_pipe) from None
            if in_pipe:
                out = await _pipe_to_client(read_end, client_fd, client, in_pipe, client_stall)
                in_pipe -= out
                moved += out
                since_checkpoint += out
                if since_checkpoint >= CHECKPOINT_BYTES:
                    # Waits are checkpoints too; this only bounds a run without any.
                    since_checkpoint = 0
                    await trio.lowlevel.checkpoint()
        return moved
    finally:
        _close_pipes([pipe])


async def _peer_to_pipe(peer: PeerSide, write_end: int, count: int, wait: bool) -> int:
    """Splice up to `count` bytes from the peer into the pipe.

    Returns 0 when nothing is ready and `wait` is false (the pipe still holds
    bytes for the client); raises PeerError, PeerStalled or OSError when the
    peer's side breaks.
    """
    while True:
        try:
            got = os.splice(
                peer.sock.fileno(), write_end, count, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
            )
        except BlockingIOError:
            if not wait:
                return 0
            await peer.wait()
            continue
        if got == 0:
            raise PeerError("peer closed mid-body")
        peer.received(got)
        return got


async def _pipe_to_client(
    read_end: int, client_fd: int, client: trio.socket.SocketType, count: int, stall: float
) -> int:
    while True:
        try:
            out = os.splice(
                read_end, client_fd, count, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
            )
        except BlockingIOError:
            with trio.move_on_after(stall) as scope:
                await trio.lowlevel.wait_writable(client)
            if scope.cancelled_caught:
                raise ClientGone("client stalled") from None
            continue
        except OSError as exc:
            raise ClientGone(str(exc)) from exc
        return out


async def _drain_pipe(
    read_end: int, client: trio.socket.SocketType, count: int, stall: float
) -> None:
    client_fd = client.fileno()
    while count:
        count -= await _pipe_to_client(read_end, client_fd, client, count, stall)


async def tee_verified(
    peer: PeerSide,
    client: trio.socket.SocketType,
    early: bytes,
    remaining: int,
    hasher: hashlib._Hash,
    expected_hex: str,
    client_stall: float,
) -> int:
    """`copy_verified`, with all but the last `TAIL` bytes spliced to the client and
    hashed from a `tee(2)` of the pipe on a worker thread. Falls back to
    `copy_verified` when tee is not there or the process is out of descriptors."""
    bulk = remaining - TAIL
    pipes = _open_tee_pipes() if bulk > len(early) else None
    if pipes is None:
        return await copy_verified(
            peer, client, early, remaining, hasher, expected_hex, client_stall
        )
    moved = 0
    try:
        if early:
            hasher.update(early)
            await to_client(client, early, client_stall)
            moved = len(early)
        moved += await _tee_rounds(pipes, peer, client, bulk - moved, hasher, client_stall)
    except PeerFailure as failure:
        failure.moved += moved
        raise
    finally:
        pipes.close()
    try:
        return moved + await copy_verified(
            peer, client, b"", remaining - moved, hasher, expected_hex, client_stall
        )
    except (PeerFailure, DigestMismatch) as failure:
        failure.moved += moved
        raise


async def _tee_rounds(
    pipes: TeePipes,
    peer: PeerSide,
    client: trio.socket.SocketType,
    count: int,
    hasher: hashlib._Hash,
    client_stall: float,
) -> int:
    """Move `count` bytes peer -> pipe A -> client, each pipeful duplicated first into
    one of the B pipes (in turn) and hashed from there while it goes out and the
    next pipeful comes in. Pipe A is empty between rounds, and a B pipe's bytes are
    always the first bytes of A when it is teed into, so a tee (which duplicates
    from the start of A) never duplicates a byte twice."""
    a_read, a_write = pipes.a
    hashing = _PipeHash(hasher, [read_end for read_end, _ in pipes.b], PIPE_SIZE)
    moved = 0
    since_checkpoint = 0
    turn = 0
    try:
        while moved < count:
            try:
                in_a = await _fill_pipe(peer, a_write, min(PIPE_SIZE, count - moved))
            except (PeerError, PeerStalled, OSError) as exc:
                raise PeerFailure(exc, moved) from None
            while in_a:
                await hashing.wait(turn)  # this B pipe is empty
                duplicated = _tee(a_read, pipes.b[turn][1], in_a)
                hashing.start(turn, duplicated)
                turn = (turn + 1) % len(pipes.b)
                await _drain_pipe(a_read, client, duplicated, client_stall)
                in_a -= duplicated
                moved += duplicated
                since_checkpoint += duplicated
            if since_checkpoint >= CHECKPOINT_BYTES:
                since_checkpoint = 0
                await trio.lowlevel.checkpoint()
        await hashing.wait_all()
        return moved
    finally:
        # The hasher must hold exactly the bytes delivered before anything goes on.
        with trio.CancelScope(shield=True):
            await hashing.wait_all(raise_errors=False)
        hashing.close()


async def _fill_pipe(peer: PeerSide, write_end: int, count: int) -> int:
    """Splice up to `count` bytes from the peer into an empty pipe: wait for the first
    bytes, then take what else is already there."""
    filled = await _peer_to_pipe(peer, write_end, count, True)
    while filled < count:
        got = await _peer_to_pipe(peer, write_end, count - filled, False)
        if got == 0:
            break
        filled += got
    return filled


class _PipeHash:
    """Reads what a tee put in a B pipe and hashes it, on one worker thread that takes
    the batches in the order they were started (no round trip to the event loop
    between two batches); `wait` raises what a batch raised. `close` ends the
    thread."""

    def __init__(self, hasher: hashlib._Hash, read_ends: list[int], size: int) -> None:
        self._hasher = hasher
        self._read_ends = read_ends
        self._buffer = memoryview(bytearray(size))
        self._token = trio.lowlevel.current_trio_token()
        self._done: list[trio.Event | None] = [None] * len(read_ends)
        self._jobs: queue.SimpleQueue[tuple[int, int, trio.Event] | None] = queue.SimpleQueue()
        self._started = False
        self._error: OSError | None = None

    def start(self, slot: int, count: int) -> None:
        done = self._done[slot] = trio.Event()
        if not self._started:
            self._started = True
            trio.lowlevel.start_thread_soon(self._work, lambda _: None)
        self._jobs.put((slot, count, done))

    async def wait(self, slot: int) -> None:
        """Until the batch last started from `slot` is in the hash."""
        done = self._done[slot]
        if done is not None:
            await done.wait()
            self._done[slot] = None
        if self._error is not None:
            raise self._error

    async def wait_all(self, raise_errors: bool = True) -> None:
        for done in self._done:
            if done is not None:
                await done.wait()
        if raise_errors and self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._started:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            slot, count, done = job
            if self._error is None:
                try:
                    self._hash(self._read_ends[slot], self._buffer[:count])
                except OSError as exc:  # the hash is unusable from here on
                    self._error = exc
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(done.set)

    def _hash(self, fd: int, view: memoryview) -> None:
        filled = 0
        while filled < len(view):
            got = os.readv(fd, [view[filled:]])
            if got == 0:
                raise OSError(errno.EPIPE, "the hash pipe ran dry")
            filled += got
        self._hasher.update(view)


def _load_tee() -> Callable[[int, int, int, int], int] | None:
    try:
        tee = ctypes.CDLL(None, use_errno=True).tee
    except (OSError, AttributeError):
        return None
    tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
    tee.restype = ctypes.c_ssize_t
    return tee


_TEE = _load_tee()


def _tee(source: int, dest: int, count: int) -> int:
    """Duplicate up to `count` bytes from the start of pipe `source` into `dest`."""
    assert _TEE is not None
    got = _TEE(source, dest, count, os.SPLICE_F_NONBLOCK)
    if got < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    if got == 0:
        raise OSError(errno.EPIPE, "tee duplicated nothing")
    return got


@dataclass(frozen=True, slots=True)
class TeePipes:
    """Pipe A (peer -> client) and the B pipes (A's duplicates, for the hash): each a
    (read end, write end)."""

    a: tuple[int, int]
    b: list[tuple[int, int]]

    def close(self) -> None:
        _close_pipes([self.a, *self.b])


def _open_tee_pipes() -> TeePipes | None:
    """The pipes of `tee_verified`, or None when tee is not there or the process is out
    of descriptors."""
    if _TEE is None:
        return None
    opened: list[tuple[int, int]] = []
    for _ in range(1 + HASH_PIPES):
        pipe = open_pipe()
        if pipe is None:
            _close_pipes(opened)
            return None
        opened.append(pipe)
    return TeePipes(opened[0], opened[1:])
