"""The Trio shell around the codec: one UDP socket, request/reply matching.

Design notes:
- The socket is a plain non-blocking stdlib socket driven with the
  try-once-then-wait pattern, so a datagram costs one syscall and no extra
  scheduling when the kernel is ready (the common case on a quiet socket).
- Replies to incoming requests are sent from the receive loop with a single
  non-blocking attempt: if the send buffer is full the reply is dropped (the
  requester times out), so a slow send never stalls receiving. Requests that
  find the buffer full wait for it under one lock: one writer at a time.
- A reply is matched on its request id *and* the address the request went to,
  and must be of the type that answers the request; anything else is counted
  and dropped. Nothing a peer sends can raise out of the receive loop.
- A reply that comes after its request timed out or was abandoned is not
  delivered, but it still proves the peer alive (the routing table hears of
  it): a pause on our side (CPU, GC) must not cost peers their place.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .auth import Authenticator
from .messages import (
    ADD_PROVIDER,
    ADD_PROVIDER_ACK,
    FIND_NODE,
    GET_PROVIDERS,
    MAX_DATAGRAM,
    NODES,
    PING,
    PONG,
    PROVIDERS,
    DecodeError,
    Envelope,
    Message,
    decode,
    encode,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]
RequestCallback = Callable[[Envelope, str, int], Message | None]
ReplyCallback = Callable[[Envelope, str, int], None]

_REPLY_TO = {PING: PONG, FIND_NODE: NODES, ADD_PROVIDER: ADD_PROVIDER_ACK, GET_PROVIDERS: PROVIDERS}
_BURST = 32  # datagrams handled back to back before letting other tasks run
_RECENT = 4096  # timed-out or abandoned requests whose late replies are still recognised


@dataclass(slots=True)
class TransportCounters:
    datagrams_in: int = 0
    datagrams_out: int = 0
    dropped_oversized: int = 0
    dropped_malformed: int = 0
    dropped_unauthenticated: int = 0
    # Replies with an unknown id, from the wrong address or of the wrong type:
    dropped_unsolicited: int = 0
    dropped_replies: int = 0  # replies not sent because the socket buffer was full
    send_errors: int = 0
    receive_errors: int = 0
    handler_errors: int = 0
    requests_sent: int = 0
    timeouts: int = 0
    late_replies: int = 0


@functools.lru_cache(maxsize=8192)
def canonical_host(host: str) -> str:
    """The canonical text of an IP address; IPv4-mapped IPv6 addresses become IPv4."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def open_udp_socket(host: str, port: int) -> socket.socket:
    """A bound non-blocking UDP socket; `host` is an IP literal (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        sock.bind((host or "0.0.0.0", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class _Pending:
    address: Address
    reply_type: int
    deadline: float
    batch: RequestBatch


class UdpTransport:
    def __init__(
        self,
        sock: socket.socket,
        own_id: bytes,
        on_request: RequestCallback,
        on_reply: ReplyCallback,
        *,
        auth: Authenticator | None = None,
        max_in_flight: int = 256,
        sweep_interval: float = 1.0,
    ) -> None:
        self._sock = sock
        self._ipv4_only = sock.family == socket.AF_INET
        self._random = b""
        self._random_at = 0
        self.own_id = own_id
        self._on_request = on_request
        self._on_reply = on_reply
        self._auth = auth or Authenticator(None)
        self._budget = MAX_DATAGRAM - self._auth.overhead
        self._pending: dict[int, _Pending] = {}
        # request id -> (address, reply type) of requests given up on, oldest first
        self._recent: dict[int, tuple[Address, int]] = {}
        self._slots = trio.Semaphore(max_in_flight)
        self._send_lock = trio.Lock()
        self._sweep_interval = sweep_interval
        self.counters = TransportCounters()

    @property
    def local_address(self) -> Address:
        host, port = self._sock.getsockname()[:2]
        return canonical_host(host), port

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_loop)
            task_status.started()
            await self._receive_loop()

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()

    # -- sending --------------------------------------------------------------

    def _sockaddr(self, host: str, port: int) -> tuple[str, int] | None:
        if self._ipv4_only:
            return None if ":" in host else (host, port)
        return (host if ":" in host else "::ffff:" + host), port

    def _send_now(self, data: bytes, sockaddr: tuple[str, int]) -> bool | None:
        """One attempt: True if sent, False on a hard error, None if it would block."""
        try:
            self._sock.sendto(data, sockaddr)
        except BlockingIOError:
            return None
        except OSError:
            self.counters.send_errors += 1
            return False
        self.counters.datagrams_out += 1
        return True

    async def _send(self, data: bytes, sockaddr: tuple[str, int], deadline: float) -> bool:
        """Send one datagram; False on error or if the socket stays full until `deadline`."""
        sent = self._send_now(data, sockaddr)
        if sent is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            return sent
        with trio.move_on_at(deadline):
            async with self._send_lock:
                while sent is None:
                    await trio.lowlevel.wait_writable(self._sock)
                    sent = self._send_now(data, sockaddr)
        return bool(sent)

    def _seal(self, envelope: Envelope) -> bytes:
        return self._auth.seal(encode(envelope, self._budget))

    async def _send_request(
        self,
        address: Address,
        message: Message,
        timeout: float,
        batch: RequestBatch,
        tag: object,
        stall_after: float | None,
    ) -> bool:
        host, port = address
        sockaddr = self._sockaddr(host, port)
        if sockaddr is None:
            self.counters.send_errors += 1
            return False
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()
        request_id = self._request_id()
        while request_id in self._pending:
            request_id = self._request_id()
        data = self._seal(Envelope(request_id, self.own_id, message))
        now = trio.current_time()
        deadline = now + timeout
        stall = now + stall_after if stall_after is not None and stall_after < timeout else math.inf
        # Registered before sending: the reply may come back before this task runs again.
        self._pending[request_id] = _Pending((host, port), _REPLY_TO[message.TYPE], deadline, batch)
        batch._outstanding[request_id] = [deadline, stall, tag]
        try:
            sent = await self._send(data, sockaddr, deadline)
        except BaseException:
            self._forget(request_id)
            batch._outstanding.pop(request_id, None)
            raise
        if not sent:
            self._forget(request_id)
            batch._outstanding.pop(request_id, None)
            return False
        self.counters.requests_sent += 1
        return True

    def _request_id(self) -> int:
        """An unpredictable 64-bit id; random bytes are fetched 256 ids at a time."""
        at = self._random_at
        if at >= len(self._random):
            self._random, at = os.urandom(8 * 256), 0
        self._random_at = at + 8
        return int.from_bytes(self._random[at : at + 8], "big")

    def _forget(self, request_id: int, *, unanswered: bool = False) -> bool:
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return False
        self._slots.release()
        if unanswered:
            if len(self._recent) >= _RECENT:
                del self._recent[next(iter(self._recent))]
            self._recent[request_id] = (pending.address, pending.reply_type)
        return True

    def _expire(self, request_id: int) -> None:
        if self._forget(request_id, unanswered=True):
            self.counters.timeouts += 1

    def batch(self) -> RequestBatch:
        return RequestBatch(self)

    async def request(self, address: Address, message: Message, timeout: float) -> Envelope | None:
        """Send one request and wait for its reply; None on timeout or send failure."""
        batch = RequestBatch(self)
        try:
            if not await batch.send(address, message, timeout):
                return None
            _, reply = await batch.next()
            return reply
        finally:
            batch.close()

    # -- receiving ------------------------------------------------------------

    async def _receive_loop(self) -> None:
        sock = self._sock
        burst = 0
        while True:
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM + 1)
            except BlockingIOError:
                burst = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                self.counters.receive_errors += 1
                await trio.lowlevel.checkpoint()
                continue
            self.handle_datagram(data, source[0], source[1])
            burst += 1
            if burst >= _BURST:
                burst = 0
                await trio.lowlevel.checkpoint()

    def handle_datagram(self, data: bytes, source_host: str, source_port: int) -> None:
        """Process one received datagram. Never raises."""
        counters = self.counters
        counters.datagrams_in += 1
        if len(data) > MAX_DATAGRAM:
            counters.dropped_oversized += 1
            return
        payload = self._auth.open(data)
        if payload is None:
            counters.dropped_unauthenticated += 1
            return
        try:
            envelope = decode(payload)
        except DecodeError:
            counters.dropped_malformed += 1
            return
        if envelope.sender_id == self.own_id:
            counters.dropped_unsolicited += 1
            return
        try:
            host = canonical_host(source_host)
            message = envelope.message
            if message.IS_REPLY:
                request_id = envelope.request_id
                pending = self._pending.get(request_id)
                if pending is not None:
                    expected = (pending.address, pending.reply_type)
                else:
                    expected = self._recent.get(request_id)
                if expected != ((host, source_port), message.TYPE):
                    counters.dropped_unsolicited += 1
                    return
                if pending is None:
                    del self._recent[request_id]
                    counters.late_replies += 1
                else:
                    self._forget(request_id)
                    pending.batch._deliver(request_id, envelope)
                self._on_reply(envelope, host, source_port)
                return
            reply = self._on_request(envelope, host, source_port)
            if reply is not None:
                data = self._seal(Envelope(envelope.request_id, self.own_id, reply))
                sockaddr = self._sockaddr(host, source_port)
                if sockaddr is not None and self._send_now(data, sockaddr) is None:
                    counters.dropped_replies += 1
        except Exception:
            # A bug in our own handling, not a peer's fault: keep serving.
            counters.handler_errors += 1
            log.exception("DHT: error handling a datagram from %s:%s", source_host, source_port)

    async def _sweep_loop(self) -> None:
        """Expire requests whose batch was abandoned without being closed."""
        while True:
            await trio.sleep(self._sweep_interval)
            now = trio.current_time() - self._sweep_interval
            for request_id in [r for r, p in self._pending.items() if p.deadline < now]:
                self._expire(request_id)


class _Stalled:
    def __repr__(self) -> str:
        return "STALLED"


STALLED = _Stalled()


class RequestBatch:
    """A set of outstanding requests whose outcomes come back one at a time,
    as replies arrive or deadlines pass. Close it when done (it forgets what is
    still outstanding)."""

    def __init__(self, transport: UdpTransport) -> None:
        self._transport = transport
        # request id -> [deadline, soft deadline (inf once reported), tag]
        self._outstanding: dict[int, list] = {}
        self._ready: deque[tuple[int, Envelope]] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._outstanding)

    async def send(
        self,
        address: Address,
        message: Message,
        timeout: float,
        tag: object = None,
        *,
        stall_after: float | None = None,
    ) -> bool:
        """Send a request; False if it could not be sent (its outcome is not reported).

        With `stall_after`, `next()` also reports (tag, STALLED) once that much
        time has passed without a reply; the request stays outstanding."""
        if self._closed:
            raise trio.ClosedResourceError("batch is closed")
        return await self._transport._send_request(
            address, message, timeout, self, tag, stall_after
        )

    def _deliver(self, request_id: int, envelope: Envelope) -> None:
        if not self._closed:
            self._ready.append((request_id, envelope))
            self._lot.unpark_all()

    async def next(self) -> tuple[object, Envelope | _Stalled | None]:
        """The tag of the next request settled, with its reply, or None on timeout,
        or STALLED when it passed its soft deadline."""
        while True:
            while self._ready:
                request_id, envelope = self._ready.popleft()
                entry = self._outstanding.pop(request_id, None)
                if entry is not None:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    return entry[2], envelope
            if not self._outstanding:
                raise RuntimeError("no request outstanding")
            now = trio.current_time()
            deadline = math.inf
            for request_id, entry in self._outstanding.items():
                when, stall, tag = entry
                if when <= now:
                    del self._outstanding[request_id]
                    self._transport._expire(request_id)
                    await trio.lowlevel.checkpoint_if_cancelled()
                    return tag, None
                if stall <= now:
                    entry[1] = math.inf
                    await trio.lowlevel.checkpoint_if_cancelled()
                    return tag, STALLED
                deadline = min(deadline, when, stall)
            with trio.move_on_at(deadline):
                await self._lot.park()

    def outstanding_tags(self) -> list[object]:
        return [entry[2] for entry in self._outstanding.values()]

    def close(self) -> None:
        self._closed = True
        for request_id in self._outstanding:
            self._transport._forget(request_id, unanswered=True)
        self._outstanding.clear()
        self._ready.clear()
