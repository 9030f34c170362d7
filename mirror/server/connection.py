"""One client connection: read heads, hand them to the handler, write responses.

HTTP/1.1 keep-alive and pipelining, in order; one writer per socket. A head must
arrive within `head_timeout` of its first byte; an idle connection is closed after
`idle_timeout`; a response whose reader accepts nothing for `stall_timeout` is cut.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from mirror.server.http import response_head
from mirror.server.io import PeerStalled, SourceShort, send_all
from mirror.server.request import HeadError, Limits, Request, RequestParser
from mirror.server.response import Response, error_response

log = logging.getLogger("mirror.server")

Handler = Callable[[Request], Awaitable[Response]]
# Called after each response: request, response, bytes of body sent, seconds taken.
Observer = Callable[[Request, Response, int, float], None]


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    limits: Limits = field(default_factory=Limits)
    head_timeout: float = 10.0
    idle_timeout: float = 60.0
    stall_timeout: float = 30.0
    recv_size: int = 64 * 1024


@dataclass(slots=True)
class Drain:
    """Graceful stop: idle connections close now, busy ones after their response."""

    draining: bool = False
    idle_scopes: set[trio.CancelScope] = field(default_factory=set)

    def start(self) -> None:
        self.draining = True
        for scope in self.idle_scopes:
            scope.cancel()


_CONNECTION_ERRORS = (OSError, PeerStalled, SourceShort)


async def serve_connection(
    sock: trio.socket.SocketType,
    handler: Handler,
    config: ConnectionConfig,
    drain: Drain,
    observe: Observer | None = None,
) -> None:
    parser = RequestParser(config.limits)
    pending: deque[Request] = deque()
    head_deadline: float | None = None
    fd = sock.fileno()
    with sock:
        while True:
            if pending:
                request = pending.popleft()
                keep_open = await _respond(sock, handler, request, config, drain, observe)
                if not keep_open:
                    return
                continue
            if drain.draining and not parser.in_head:
                return
            try:
                data = os.read(fd, config.recv_size)
            except BlockingIOError:
                if not await _wait_readable(sock, parser.in_head, head_deadline, config, drain):
                    return
                continue
            except _CONNECTION_ERRORS:
                return
            # The bytes were already there: still yield once per read, for fairness and
            # so that cancellation is seen.
            await trio.lowlevel.checkpoint()
            if not data:
                return
            try:
                pending.extend(parser.feed(data))
            except HeadError as exc:
                code = "NAME_INVALID" if exc.status == 414 else "UNSUPPORTED"
                await _send_error_quietly(sock, exc.status, code, exc.reason)
                return
            if parser.in_head and head_deadline is None:
                head_deadline = trio.current_time() + config.head_timeout
            elif not parser.in_head:
                head_deadline = None


async def _wait_readable(
    sock: trio.socket.SocketType,
    in_head: bool,
    head_deadline: float | None,
    config: ConnectionConfig,
    drain: Drain,
) -> bool:
    """Wait for bytes; False when the connection is to close (idle, head timeout, drain)."""
    deadline = head_deadline if in_head else trio.current_time() + config.idle_timeout
    with trio.CancelScope(deadline=deadline) as scope:
        if not in_head:
            drain.idle_scopes.add(scope)
        try:
            await trio.lowlevel.wait_readable(sock)
        finally:
            drain.idle_scopes.discard(scope)
    if scope.cancelled_caught:
        if in_head:
            await _send_error_quietly(sock, 408, "UNSUPPORTED", "request head timed out")
        return False
    return True


async def _respond(
    sock: trio.socket.SocketType,
    handler: Handler,
    request: Request,
    config: ConnectionConfig,
    drain: Drain,
    observe: Observer | None,
) -> bool:
    """Answer one request; False when the connection must close afterwards."""
    started = trio.current_time()
    try:
        response = await handler(request)
    except Exception:
        log.exception("handler failed", extra={"path": request.path})
        response = error_response(500, "UNSUPPORTED", "internal error", close=True)
    close = response.close or not request.keep_alive or drain.draining
    sent = 0
    try:
        head = response_head(response.status, response.headers, response.length, close=close)
        body = response.body
        if request.method == "HEAD":
            await send_all(sock, head, stall_timeout=config.stall_timeout)
        elif isinstance(body, bytes):
            await send_all(sock, head + body, stall_timeout=config.stall_timeout)
            sent = len(body)
        else:
            await send_all(sock, head, more=True, stall_timeout=config.stall_timeout)
            await body.send(sock, config.stall_timeout)
            sent = body.length
    except _CONNECTION_ERRORS as exc:
        log.debug("response cut short", extra={"path": request.path, "error": repr(exc)})
        return False
    except Exception as exc:
        # A body fed from elsewhere (a peer) can fail in its own ways; the head is
        # already out, so the only honest end is closing this one connection.
        log.warning("response aborted", extra={"path": request.path, "error": repr(exc)})
        return False
    finally:
        response.release()
        if observe is not None:
            observe(request, response, sent, trio.current_time() - started)
    return not close


async def _send_error_quietly(
    sock: trio.socket.SocketType, status: int, code: str, message: str
) -> None:
    response = error_response(status, code, message, close=True)
    head = response_head(status, response.headers, response.length, close=True)
    assert isinstance(response.body, bytes)
    with trio.move_on_after(1.0), contextlib.suppress(*_CONNECTION_ERRORS):
        await send_all(sock, head + response.body)
