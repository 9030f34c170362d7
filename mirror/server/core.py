"""One connection's HTTP/1.1 lifecycle as a pure state machine: no I/O, no clock.

The shell (`connection.py`) feeds it what happened (bytes read, the peer's end of
stream, a response written, a drain) and asks `next_event(now)` what to do next:

- `RequestReady(request)`: answer it; call `closes_after` before writing the head
  and `response_sent` once it is out. Requests are answered one at a time, in order;
  bytes buffered after one head (pipelining) become the next request.
- `NeedData(deadline, idle)`: read, waiting no later than `deadline`; an `idle` wait
  is one a drain may cut short.
- `SendError(status, code, message)`: write this error with `Connection: close`.
- `Close(reason)`: close the socket; every later call answers the same.

Keep-alive ends when the request, the response, or a drain says so. Every byte
counts toward a head: a head must be complete within `head_timeout` of the first
byte received after the last one (408), even bytes the parser skips (the empty
lines HTTP allows before a request line), so a client trickling `\r\n` cannot hold
a connection; a connection that sent nothing since its last response closes after
`idle_timeout`. Draining: a response that starts while draining is the last;
between responses a connection with no request line begun closes at once, and a
begun one is still answered. Heads outside the parser's bounds get 400, 414, 431
(or 505) and the connection closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mirror.server.request import HeadError, Limits, Request, RequestParser


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    limits: Limits = field(default_factory=Limits)
    head_timeout: float = 10.0
    idle_timeout: float = 60.0
    stall_timeout: float = 30.0
    recv_size: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class RequestReady:
    request: Request


@dataclass(frozen=True, slots=True)
class NeedData:
    deadline: float
    idle: bool


@dataclass(frozen=True, slots=True)
class SendError:
    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


Event = RequestReady | NeedData | SendError | Close


class ConnectionCore:
    __slots__ = (
        "_closed",
        "_closing",
        "_config",
        "_draining",
        "_head_deadline",
        "_idle_since",
        "_parser",
        "_peer_closed",
        "_pending",
        "_pending_at",
        "_responding",
        "_stray",
    )

    def __init__(self, config: ConnectionConfig, now: float) -> None:
        self._config = config
        self._parser = RequestParser(config.limits)
        # Heads parsed and not yet answered, from `_pending_at` on (a list and an index:
        # most connections never pipeline, and an empty deque costs 600 bytes).
        self._pending: Sequence[Request] = ()
        self._pending_at = 0
        self._idle_since = now
        self._head_deadline: float | None = None
        # Bytes arrived that began no request line yet (empty lines): the head clock runs.
        self._stray = False
        self._responding: Request | None = None
        self._closing = False  # the response in flight announced `Connection: close`
        self._draining = False
        self._peer_closed = False
        self._closed: Close | SendError | None = None

    # What happened

    def receive(self, data: bytes) -> None:
        """Bytes read from the peer; empty means the peer closed its end."""
        if not data:
            self._peer_closed = True
            return
        try:
            ready = self._parser.feed(data)
        except HeadError as exc:
            code = "NAME_INVALID" if exc.status == 414 else "UNSUPPORTED"
            self._closed = SendError(exc.status, code, exc.reason)
            return
        if ready:
            if self._pending:
                self._pending = [*self._pending[self._pending_at :], *ready]
            else:
                self._pending = ready
            self._pending_at = 0
            # A head begun in the same bytes is a new head: its clock starts later.
            self._head_deadline = None
            self._stray = False
        else:
            self._stray = True

    def peer_closed(self) -> None:
        self._peer_closed = True

    def release(self) -> None:
        """The connection is over: drop the parser now (it is a reference cycle with its
        callbacks, which would otherwise wait for the cyclic garbage collector)."""
        self._parser.release()

    def drain(self) -> None:
        self._draining = True

    def closes_after(self, response_close: bool) -> bool:
        """Whether the response about to be written is this connection's last."""
        request = self._responding
        assert request is not None, "closes_after outside a response"
        self._closing = response_close or not request.keep_alive or self._draining
        return self._closing

    def response_sent(self, now: float) -> None:
        assert self._responding is not None, "response_sent outside a response"
        self._responding = None
        self._idle_since = now
        if self._closing:
            self._closed = Close("response closed the connection")

    # What to do

    def next_event(self, now: float) -> Event:
        closed = self._closed
        if closed is not None:
            if isinstance(closed, SendError):
                self._closed = Close(closed.message)
            return closed
        assert self._responding is None, "next_event during a response"
        if self._pending_at < len(self._pending):
            request = self._pending[self._pending_at]
            self._pending_at += 1
            if self._pending_at == len(self._pending):
                self._pending, self._pending_at = (), 0
            self._responding = request
            return RequestReady(request)
        if self._parser.in_head:
            return self._await_head(now)
        if self._peer_closed:
            return self._close("peer closed")
        if self._draining:
            return self._close("draining")
        if self._stray:
            return self._await_head(now, idle=True)
        deadline = self._idle_since + self._config.idle_timeout
        if now >= deadline:
            return self._close("idle timeout")
        return NeedData(deadline, idle=True)

    def _await_head(self, now: float, *, idle: bool = False) -> Event:
        if self._peer_closed:
            return self._close("peer closed mid-head")
        deadline = self._head_deadline
        if deadline is None:
            deadline = self._head_deadline = now + self._config.head_timeout
        elif now >= deadline:
            self._closed = Close("request head timed out")
            return SendError(408, "UNSUPPORTED", "request head timed out")
        return NeedData(deadline, idle=idle)

    def _close(self, reason: str) -> Close:
        closed = self._closed = Close(reason)
        return closed
