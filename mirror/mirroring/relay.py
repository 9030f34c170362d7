"""Relaying a peer's response body to the client, and resuming it elsewhere on failure.

How the bytes move is movers.py's job; `--mirror-relay` chooses per process:
`splice` (the default; a whole blob, hashed on the way, is spliced and hashed
from a `tee(2)` of the pipe) or `copy` (through buffers in Python).
`python -m bench proxy` measures both side by side. Splice wins only when done
with care: a pipe enlarged to 1 MiB, no Trio checkpoint per splice call (one per
8 MiB; waits are checkpoints anyway), and the try-once-then-wait pattern on both
ends.
A failure on the peer's side is resumed from another provider with `Range`
from the first byte not yet received, so the client sees one unbroken body; a
failure on the client's side ends the transfer. A complete holder that sends
less than a floor rate (ratefloor.py) is a failure too: a trickle never trips
the stall timeout of one read. A download still in progress is exempt: its pace
is its upstream's, and its own source stops it when it stops growing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from mirror.ingest.serving import INFLIGHT_HEADER
from mirror.mirroring.ledger import body_failure
from mirror.mirroring.movers import (
    DigestMismatch,
    PeerFailure,
    PeerSide,
    copy,
    copy_verified,
    open_pipe,
    splice,
    tee_verified,
    to_client,
)
from mirror.mirroring.peer import PeerError, PeerResponse
from mirror.mirroring.ratefloor import RateFloor

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
        source = PeerSide(peer.sock, self.stall_timeout, self._floor(peer))
        if self._hasher is not None and self.verify is not None:
            self.stats.mode = "tee" if self.use_splice else "copy"
            verified = tee_verified if self.use_splice else copy_verified
            try:
                return await verified(
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
            await to_client(sock, early, stall)
        try:
            pipe = open_pipe() if self.use_splice else None
            if pipe is not None:
                self.stats.mode = "splice"
                moved = await splice(pipe, source, sock, remaining - len(early), stall)
            else:
                moved = await copy(source, sock, remaining - len(early), stall)
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
