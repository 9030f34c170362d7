"""The Trio shell around the stripe core (`stripe.py`): holder connections, the ring, the client.

A `StripedBody` is the body of one whole-blob answer fed by several complete
holders at once. It owns a ring buffer of the core's `window` bytes: byte `o` of
the blob lives at `o % window`, and the core never lets a range be asked for past
`window` bytes beyond the first one not yet delivered, so bytes still owed to the
client are never overwritten. One task per holder keeps one connection open and
sends its range requests ahead (HTTP/1.1 pipelining: the holder's registry answers
them in order on the same connection), reads each answer's head, then reads its
body straight into the ring (`readv`, no copy through a buffer of its own). The
caller's task sends the ring to the client in order, hashing each chunk on a
worker thread while the next one goes out, and holds the last chunk back until the
whole blob hashes to its digest: a mismatch resets the client, never a clean end.

Every event goes to the core with the time it happened; every command it returns
is carried out at once (`Fetch` queues a request on the holder's connection,
opening it on first use; `Drop` cancels the holder's task, which closes its
socket). One timer task wakes the core at its deadline. A holder's task never
writes into the ring after its holder was dropped: its range may be another's now.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httptools
import trio

from dht import Provider
from mirror.mirroring.distrust import Where
from mirror.mirroring.movers import DigestMismatch, ThreadedHash, require_digest, to_client
from mirror.mirroring.peer import HeadCollector, PeerError, connect
from mirror.mirroring.stripe import (
    MIB,
    Answered,
    Delivered,
    Drop,
    Fetch,
    GiveUp,
    HolderFailed,
    HolderFound,
    NoMoreHolders,
    Received,
    Stripe,
    StripeEvent,
    StripeLimits,
    StripeStats,
    WakeAt,
)
from mirror.oci.ranges import parse_decimal
from mirror.server.io import send_all
from mirror.server.registry import STRIPE_HEADER
from mirror.server.sendfailures import PeerStalled

log = logging.getLogger("mirror.mirroring")

MAX_HEAD = 16 * 1024
SEND_CHUNK = MIB
# Stands for every source of a digest in a `SourceDistrust` of blobs not to stripe.
ANY_SOURCE: Where = ("", 0)


@dataclass(frozen=True, slots=True)
class StripeSettings:
    """When a blob is striped, and how wide (the core's other limits come from there)."""

    width: int = 4  # holders at once; 1: never striped
    threshold: int = 64 * MIB  # the least a blob must weigh
    piece: int = MIB
    depth: int = 2
    # How long to wait, after the first holder's head, for the lookup to name a second
    # complete holder: with only one, the plain relay (or the redirect) serves it.
    holder_wait: float = 0.05

    def applies(self, size: int) -> bool:
        return self.width > 1 and size >= self.threshold

    def limits(self, *, stall_timeout: float, min_rate: float, rate_window: float) -> StripeLimits:
        """The core's limits: these, and the relay's own for a holder that stalls or trickles."""
        return StripeLimits(
            width=self.width,
            piece=self.piece,
            depth=self.depth,
            stall_timeout=stall_timeout,
            min_rate=min_rate,
            rate_window=rate_window,
        )


@dataclass(frozen=True, slots=True)
class StripeReport:
    """How a striped body went, for the mirror's event and logs."""

    sent: int
    digest_mismatch: bool
    stats: StripeStats[Where]


async def second_holder(sources: AsyncIterator[Provider], first: Where, wait: float) -> bool:
    """Whether `sources` names a complete holder other than `first` within `wait` seconds."""
    async with contextlib.aclosing(sources):  # type: ignore[type-var]
        with trio.move_on_after(wait):
            async for provider in sources:
                if not provider.inflight and (provider.host, provider.registry_port) != first:
                    return True
    return False


@dataclass(slots=True)
class _Link:
    """One holder's connection and the ranges asked of it, oldest first."""

    holder: Where
    spare: bool  # spare uplink only (registry.py answers 503 while it streams else)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    requests: deque[tuple[int, int]] = field(default_factory=deque)
    unsent: deque[tuple[int, int]] = field(default_factory=deque)
    work: trio.Event = field(default_factory=trio.Event)
    sock: trio.socket.SocketType | None = None
    dropped: bool = False

    def wake(self) -> None:
        self.work.set()


@dataclass(slots=True)
class _Head:
    status: int
    headers: dict[str, str]


class StripedBody:
    """A `Body` (see mirror.server.response): bytes [0, `length`) of a blob, striped."""

    def __init__(
        self,
        *,
        target: str,
        headers: list[tuple[str, str]],
        length: int,
        digest: str,
        first_holder: Where,
        sources: AsyncIterator[Provider],
        limits: StripeLimits,
        on_done: Callable[[StripeReport], None] | None = None,
        before_reset: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.length = length
        self._target = target
        self._headers = headers
        self._digest = digest
        self._first = first_holder
        self._sources: AsyncIterator[Provider] | None = sources
        self._limits = limits
        self._on_done = on_done
        self._before_reset = before_reset
        self._core: Stripe[Where] | None = None
        self._ring = memoryview(b"")
        self._links: dict[Where, _Link] = {}
        self._nursery: trio.Nursery | None = None
        self._progress = trio.Event()
        self._wake_at = math.inf
        self._timer: trio.CancelScope | None = None

    # The body

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None:
        core = self._core = Stripe[Where](
            self._limits, 0, self.length, self.length, trio.current_time(), digest=self._digest
        )
        window = min(self._limits.window, max(self.length, 1))
        self._ring = memoryview(bytearray(window))
        mismatch = False
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._pump)
                nursery.start_soon(self._tick)
                self._feed(HolderFound(self._first))
                try:
                    await self._deliver(sock, stall_timeout)
                except DigestMismatch as exc:
                    mismatch = True
                    failure = exc
                except Exception as exc:  # noqa: BLE001 - raised again below, bare
                    failure = exc
                nursery.cancel_scope.cancel()
            # Raised outside the nursery, as it is: the connection resets the client on
            # a DigestMismatch, which it would not find inside an ExceptionGroup.
            if failure is not None:
                if mismatch and self._before_reset is not None:
                    await self._before_reset()
                raise failure
        finally:
            self._ring = memoryview(b"")
            if self._on_done is not None:
                self._on_done(StripeReport(core.sent, mismatch, core.stats))

    def close(self) -> None:
        # Sockets and the lookup's iterator are closed when `send` ends; one never
        # started holds neither (an async generator never iterated needs no closing).
        self._sources = None

    # Events in, commands out

    def _feed(self, event: StripeEvent[Where] | None) -> None:
        """Tell the core what happened (None: only that time passed), then carry out
        what it says; wake the sender when more bytes are ready or the body is over."""
        assert self._core is not None
        ready = self._core.ready
        if event is not None:
            self._core.receive(event, trio.current_time())
        self._drive()
        if self._core.ready != ready:
            self._wake_sender()

    def _drive(self) -> None:
        core = self._core
        assert core is not None and self._nursery is not None
        now = trio.current_time()
        while True:
            command = core.next_command(now)
            if isinstance(command, Fetch):
                self._fetch(command)
            elif isinstance(command, Drop):
                self._drop(command)
            elif isinstance(command, WakeAt):
                self._wake_at = command.deadline
                if self._timer is not None:
                    self._timer.deadline = command.deadline
                return
            else:
                if isinstance(command, GiveUp):
                    log.info("striped fetch gave up", extra={"reason": command.reason})
                self._wake_sender()
                return

    def _fetch(self, command: Fetch[Where]) -> None:
        assert self._nursery is not None
        link = self._links.get(command.holder)
        if link is None:
            link = self._links[command.holder] = _Link(command.holder, command.spare)
            self._nursery.start_soon(self._serve, link)
        link.requests.append((command.start, command.end))
        link.unsent.append((command.start, command.end))
        link.wake()

    def _drop(self, command: Drop[Where]) -> None:
        link = self._links.pop(command.holder, None)
        log.info(
            "striped fetch dropped a holder",
            extra={"peer": "{}:{}".format(*command.holder), "reason": command.reason},
        )
        if link is not None:
            link.dropped = True
            link.scope.cancel()

    def _wake_sender(self) -> None:
        progress, self._progress = self._progress, trio.Event()
        progress.set()

    async def _tick(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._wake_at) as timer:
                self._timer = timer
                await trio.sleep_forever()
            self._timer = None
            self._feed(None)

    async def _pump(self) -> None:
        sources = self._sources
        if sources is None:
            self._feed(NoMoreHolders())
            return
        async with contextlib.aclosing(sources):  # type: ignore[type-var]
            async for provider in sources:
                if not provider.inflight:
                    self._feed(HolderFound((provider.host, provider.registry_port)))
        self._feed(NoMoreHolders())

    # The client side

    async def _deliver(self, sock: trio.socket.SocketType, stall: float) -> None:
        """Send the ring to the client in order; the last chunk only once proven."""
        core = self._core
        assert core is not None
        algorithm, _, expected = self._digest.partition(":")
        hasher = hashlib.new(algorithm)
        hashing = ThreadedHash(hasher)
        window = len(self._ring)
        out = 0  # sent to the client; `core.sent` lags until the chunk is hashed too
        try:
            while out < self.length:
                if core.ready <= out:
                    await hashing.wait()
                    if core.sent < out:
                        self._feed(Delivered(out - core.sent))
                        continue
                    if isinstance(core.over, GiveUp):
                        raise PeerError(
                            f"striped fetch gave up after {out} of {self.length} bytes: "
                            f"{core.over.reason}"
                        )
                    await self._progress.wait()
                    continue
                at = out % window
                chunk = self._ring[at : at + min(core.ready - out, SEND_CHUNK, window - at)]
                await hashing.update(chunk)  # waits for the chunk before it to be hashed
                if core.sent < out:
                    self._feed(Delivered(out - core.sent))
                if out + len(chunk) == self.length:
                    await hashing.wait()
                    require_digest(hasher, expected, "striped", out)
                await to_client(sock, chunk, stall)
                out += len(chunk)
            await hashing.wait()
            if core.sent < out:
                self._feed(Delivered(out - core.sent))
        finally:
            with trio.CancelScope(shield=True):
                await hashing.wait()

    # The holders' side

    async def _serve(self, link: _Link) -> None:
        with link.scope:
            try:
                await self._converse(link)
            except (PeerError, PeerStalled, OSError) as exc:
                if not link.dropped:
                    self._feed(HolderFailed(link.holder, str(exc) or type(exc).__name__))
            finally:
                if link.sock is not None:
                    link.sock.close()

    async def _converse(self, link: _Link) -> None:
        link.sock = await connect(*link.holder)
        while True:
            await self._send_requests(link)
            if not link.requests:
                link.work = trio.Event()
                await link.work.wait()
                continue
            start, end = link.requests[0]
            head = await _read_head(link)
            if _gone(link):
                return
            self._feed(
                Answered(
                    link.holder,
                    head.status,
                    head.headers.get("content-range"),
                    parse_decimal(head.headers.get("content-length", "")),
                    head.headers.get("docker-content-digest"),
                )
            )
            if _gone(link):  # the answer was wrong, or the holder busy
                return
            await self._read_body(link, start, end)
            link.requests.popleft()
            if head.headers.get("connection", "").lower() == "close":
                raise PeerError("the holder closed the connection")

    async def _send_requests(self, link: _Link) -> None:
        assert link.sock is not None
        if not link.unsent:
            return
        host, port = link.holder
        lines = []
        while link.unsent:
            start, end = link.unsent.popleft()
            lines += [f"GET {self._target} HTTP/1.1", f"Host: {host}:{port}"]
            lines += [f"{name}: {value}" for name, value in self._headers]
            if link.spare:
                lines.append(f"{STRIPE_HEADER}: spare")
            lines += [f"Range: bytes={start}-{end - 1}", ""]
        await send_all(link.sock, ("\r\n".join(lines) + "\r\n").encode("latin-1"))

    async def _read_body(self, link: _Link, start: int, end: int) -> None:
        assert link.sock is not None
        offset = start
        fd = link.sock.fileno()
        while offset < end:
            if _gone(link):
                return
            if link.unsent:
                await self._send_requests(link)
                continue
            try:
                count = os.readv(fd, self._ring_views(offset, end - offset))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(link.sock)
                continue
            if count == 0:
                raise PeerError("the holder closed the connection mid-body")
            offset += count
            self._feed(Received(link.holder, count))
            await trio.lowlevel.checkpoint()

    def _ring_views(self, offset: int, count: int) -> list[memoryview]:
        window = len(self._ring)
        at = offset % window
        first = self._ring[at : at + count]
        if len(first) == count:
            return [first]
        return [first, self._ring[: count - len(first)]]


def _gone(link: _Link) -> bool:
    """Dropped: its ranges may be another holder's now, so not a byte more into the ring."""
    return link.dropped


async def _read_head(link: _Link) -> _Head:
    """The next response head on the link. It is peeked at first and only its own
    bytes are taken: the body that follows goes straight into the ring."""
    sock = link.sock
    assert sock is not None
    head = bytearray()
    while True:
        seen = await sock.recv(MAX_HEAD, socket.MSG_PEEK)
        if not seen:
            raise PeerError("the holder closed the connection before a response head")
        end = (head[-3:] + seen).find(b"\r\n\r\n")
        take = len(seen) if end < 0 else end + 4 - len(head[-3:])
        while take > 0:  # bytes already there: this does not wait
            data = await sock.recv(take)
            if not data:
                raise PeerError("the holder closed the connection in a response head")
            head += data
            take -= len(data)
        if end >= 0:
            break
        if len(head) > MAX_HEAD:
            raise PeerError("response head too large")
    collector = HeadCollector()
    parser = httptools.HttpResponseParser(collector)
    try:
        parser.feed_data(bytes(head))
    except httptools.HttpParserError as exc:
        raise PeerError(f"malformed response: {exc}") from None
    if not collector.complete:
        raise PeerError("malformed response head")
    return _Head(parser.get_status_code(), collector.headers)
