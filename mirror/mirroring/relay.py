"""Moving a peer's response body to the client, and resuming it elsewhere on failure.

Two ways to move bytes, chosen per process with `--mirror-relay`:
- `splice` (the default): peer socket -> pipe -> client socket inside the kernel
  (`os.splice`), the bytes never entering Python;
- `copy`: `recv_into` a 1 MiB reusable buffer, then send it on.
`python -m bench proxy` measures both side by side. On this project's 2-core
test machine, relaying a 256 MiB layer over loopback, splice moved 1,356 MiB/s
with one client and 1,766 MiB/s with eight, copy 1,038 and 1,408 (same run):
splice wins because the relay is CPU-bound there and it skips two copies per
byte. It wins only when done with care: a pipe enlarged to 1 MiB, no Trio
checkpoint per splice call (one per 8 MiB; waits are checkpoints anyway), and
the try-once-then-wait pattern on both ends.
A failure on the peer's side is resumed from another provider with `Range`
from the first byte not yet received, so the client sees one unbroken body; a
failure on the client's side ends the transfer. A complete holder that sends
less than a floor rate (ratefloor.py) is a failure too: a trickle never trips
the stall timeout of one read. A download still in progress is exempt: its pace
is its upstream's, and its own source stops it when it stops growing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from mirror.ingest.serving import INFLIGHT_HEADER
from mirror.mirroring.ledger import body_failure
from mirror.mirroring.peer import PeerError, PeerResponse
from mirror.mirroring.ratefloor import RateFloor
from mirror.server.io import BodyIntegrityError, PeerStalled, send_all

COPY_BUFFER = 1024 * 1024
PIPE_SIZE = 1024 * 1024
CHECKPOINT_BYTES = 8 * 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ClientGone(ConnectionError):
    """The client stopped taking bytes; nothing to resume."""


class DigestMismatch(BodyIntegrityError):
    """The relayed bytes do not hash to the digest asked for: the end is never sent
    (`moved`: the bytes of this call that did reach the client)."""

    def __init__(self, message: str, moved: int = 0) -> None:
        super().__init__(message)
        self.moved = moved


# Given the absolute offset of the next byte needed, a response from another
# provider positioned there (206 with a matching Content-Range), or an error.
Resume = Callable[[int], Awaitable[PeerResponse]]


@dataclass(slots=True)
class RelayStats:
    bytes_relayed: int = 0
    resumes: int = 0
    mode: str = "copy"
    digest_mismatch: bool = False
    # Every peer that sent bytes of this body, in order (resumes add one each), and
    # how many bytes of it each sent.
    sources: list[tuple[str, int]] = field(default_factory=list)
    source_bytes: list[int] = field(default_factory=list)
    # The sources that broke off, and why (ledger.py: "body" or "timeout").
    failures: list[tuple[tuple[str, int], str]] = field(default_factory=list)

    def add_source(self, where: tuple[str, int]) -> None:
        self.sources.append(where)
        self.source_bytes.append(0)

    def moved(self, count: int) -> None:
        """`count` more bytes of the latest source reached the client."""
        self.source_bytes[-1] += count


@dataclass(slots=True)
class RelayBody:
    """A `Body` (see mirror.server.response) fed by a peer's response."""

    peer: PeerResponse
    length: int
    start: int  # absolute offset of this body's first byte in the blob
    resume: Resume | None = None
    max_resumes: int = 3
    stall_timeout: float = 10.0
    use_splice: bool = False
    # The least a complete holder must send (bytes/s over `rate_window` s of waiting
    # for it); 0: no floor.
    min_rate: float = 0.0
    rate_window: float = 10.0
    stats: RelayStats = field(default_factory=RelayStats)
    on_done: Callable[[RelayStats], None] | None = None
    # A whole blob's digest (`sha256:<hex>`): the bytes are hashed on the way (copy
    # relay) and the last chunk is held back until they match it.
    verify: str | None = None
    # Awaited when the bytes proved wrong, before the client's connection is reset.
    before_reset: Callable[[], Awaitable[None]] | None = None
    _hasher: hashlib._Hash | None = None

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None:
        sent = 0
        if self.verify is not None:
            algorithm, _, _ = self.verify.partition(":")
            self._hasher = hashlib.new(algorithm)
        stats = self.stats
        stats.add_source(self.peer.where)
        try:
            while True:
                try:
                    moved = await self._move(self.peer, sock, self.length - sent, stall_timeout)
                    sent += moved
                    stats.moved(moved)
                    return
                except DigestMismatch as mismatch:
                    sent += mismatch.moved
                    stats.moved(mismatch.moved)
                    if self.before_reset is not None:
                        await self.before_reset()
                    raise
                except PeerFailure as failure:
                    sent += failure.moved
                    stats.moved(failure.moved)
                    stats.failures.append((self.peer.where, body_failure(failure.cause)))
                    if self.resume is None or self.stats.resumes >= self.max_resumes:
                        raise PeerError(
                            f"peer failed after {sent} of {self.length} bytes: {failure.cause}"
                        ) from failure.cause
                    self.peer.close()
                    self.stats.resumes += 1
                    self.peer = await self.resume(self.start + sent)
                    stats.add_source(self.peer.where)
        finally:
            self.stats.bytes_relayed = sent
            if self.on_done is not None:
                self.on_done(self.stats)

    async def _move(
        self, peer: PeerResponse, sock: trio.socket.SocketType, remaining: int, stall: float
    ) -> int:
        """Move up to `remaining` bytes; raises PeerFailure with the count moved before it."""
        early = peer.early_body[:remaining]
        peer.early_body = b""
        source = _PeerSide(peer.sock, self.stall_timeout, self._floor(peer))
        if self._hasher is not None and self.verify is not None:
            self.stats.mode = "copy"
            try:
                return await _copy_verified(
                    source,
                    sock,
                    early,
                    remaining,
                    self._hasher,
                    self.verify.partition(":")[2],
                    stall,
                )
            except DigestMismatch:
                self.stats.digest_mismatch = True
                raise
        if early:
            await _to_client(sock, early, stall)
        try:
            pipe = _open_pipe() if self.use_splice else None
            if pipe is not None:
                self.stats.mode = "splice"
                moved = await _splice(pipe, source, sock, remaining - len(early), stall)
            else:
                moved = await _copy(source, sock, remaining - len(early), stall)
        except PeerFailure as failure:
            failure.moved += len(early)
            raise
        return moved + len(early)

    def _floor(self, peer: PeerResponse) -> RateFloor | None:
        if self.min_rate <= 0 or peer.header(INFLIGHT_HEADER.lower()) is not None:
            return None
        return RateFloor(self.min_rate, self.rate_window)

    def close(self) -> None:
        self.peer.close()


class PeerFailure(Exception):
    """The peer's side broke after `moved` bytes reached the client."""

    def __init__(self, cause: Exception, moved: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.moved = moved


async def _to_client(sock: trio.socket.SocketType, data: bytes | memoryview, stall: float) -> None:
    try:
        await send_all(sock, data, stall_timeout=stall)  # type: ignore[arg-type]
    except (OSError, PeerStalled) as exc:
        raise ClientGone(str(exc)) from exc


@dataclass(slots=True)
class _PeerSide:
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


async def _copy(
    peer: _PeerSide, client: trio.socket.SocketType, remaining: int, client_stall: float
) -> int:
    buffer = memoryview(bytearray(min(COPY_BUFFER, max(remaining, 1))))
    moved = 0
    while moved < remaining:
        try:
            received = await _fill(peer, buffer[: min(len(buffer), remaining - moved)])
        except (PeerError, PeerStalled, OSError) as exc:
            raise PeerFailure(exc, moved) from None
        await _to_client(client, buffer[:received], client_stall)
        moved += received
    return moved


async def _copy_verified(
    peer: _PeerSide,
    client: trio.socket.SocketType,
    early: bytes,
    remaining: int,
    hasher: hashlib._Hash,
    expected_hex: str,
    client_stall: float,
) -> int:
    """`_copy`, hashing every byte; the chunk that ends the body goes out only if the
    hash matches (each call's `remaining` ends where the whole body does).

    Each chunk is hashed on a worker thread (hashlib lets go of the GIL) while the
    next one is read, alternating between two buffers: on this project's machine
    hashing on the event loop held one relay to about 850 MiB/s."""
    hashing = _ThreadedHash(hasher)
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
                    got = await _fill(peer, buffer[: min(len(buffer), remaining - moved)])
                except (PeerError, PeerStalled, OSError) as exc:
                    raise PeerFailure(exc, moved) from None
                chunk = buffer[:got]
            await hashing.update(chunk)  # waits for the chunk before, so `buffer` is free
            if moved + len(chunk) == remaining:
                await hashing.wait()
                if hasher.hexdigest() != expected_hex:
                    raise DigestMismatch(
                        f"relayed bytes hash to {hasher.name}:{hasher.hexdigest()}", moved
                    )
            await _to_client(client, chunk, client_stall)
            moved += len(chunk)
        return moved
    finally:
        # The hasher must hold exactly the bytes sent before a resume goes on with it.
        with trio.CancelScope(shield=True):
            await hashing.wait()


class _ThreadedHash:
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


async def _fill(peer: _PeerSide, view: memoryview) -> int:
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


def _open_pipe() -> tuple[int, int] | None:
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


async def _splice(
    pipe: tuple[int, int],
    peer: _PeerSide,
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
        os.close(read_end)
        os.close(write_end)


async def _peer_to_pipe(peer: _PeerSide, write_end: int, count: int, wait: bool) -> int:
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
