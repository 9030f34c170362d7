"""One client connection's Trio shell: reads, writes, timers around `core.py`.

The core decides keep-alive, pipelining, deadlines, drain and error answers; this
module only reads (try once, then wait readable until the core's deadline), calls
the handler, and writes heads and bodies (`io.py`), one writer per socket. Every
response reaches at least one schedule point, so a pipelined burst yields to other
connections between responses. A response whose reader accepts nothing for
`stall_timeout` is cut. A handler that runs out of file descriptors (EMFILE,
ENFILE) gets its request answered 503 with `Retry-After`, and the connection closed
to give one back; any other failure is a 500 with the traceback in the log.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from mirror.server.core import (
    Close,
    ConnectionConfig,
    ConnectionCore,
    NeedData,
    RequestReady,
    SendError,
)
from mirror.server.http import response_head
from mirror.server.io import BodyIntegrityError, send_all
from mirror.server.request import Request
from mirror.server.response import Response, error_response, unavailable
from mirror.server.sendfailures import PeerStalled, SourceShort
from mirror.server.streamcap import Preempted

__all__ = [
    "FD_EXHAUSTED",
    "ConnectionConfig",
    "Drain",
    "Handler",
    "Observer",
    "refusal_bytes",
    "serve_connection",
]

log = logging.getLogger("mirror.server")

Handler = Callable[[Request], Awaitable[Response]]
# Called after each response: request, response, bytes of body sent, seconds taken.
Observer = Callable[[Request, Response, int, float], None]


@dataclass(slots=True)
class Drain:
    """Graceful stop: tells every live core, and wakes the connections waiting idle."""

    draining: bool = False
    cores: set[ConnectionCore] = field(default_factory=set)
    idle_scopes: set[trio.CancelScope] = field(default_factory=set)

    def start(self) -> None:
        self.draining = True
        for core in self.cores:
            core.drain()
        for scope in self.idle_scopes:
            scope.cancel()

    def add(self, core: ConnectionCore) -> None:
        self.cores.add(core)
        if self.draining:
            core.drain()


_CONNECTION_ERRORS = (OSError, PeerStalled, SourceShort, Preempted)
FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


async def serve_connection(
    sock: trio.socket.SocketType,
    handler: Handler,
    config: ConnectionConfig,
    drain: Drain,
    observe: Observer | None = None,
    *,
    on_exhausted: Callable[[], None] | None = None,
) -> None:
    core = ConnectionCore(config, trio.current_time())
    drain.add(core)
    client = _client_host(sock)
    try:
        with sock:
            while True:
                event = core.next_event(trio.current_time())
                if isinstance(event, RequestReady):
                    event.request.client = client
                    if not await _respond(
                        sock, core, handler, event.request, config, observe, on_exhausted
                    ):
                        return
                elif isinstance(event, NeedData):
                    await _receive(sock, core, event, config, drain)
                elif isinstance(event, SendError):
                    await _send_error_quietly(sock, event)
                else:
                    assert isinstance(event, Close)
                    return
    finally:
        drain.cores.discard(core)
        core.release()


def _client_host(sock: trio.socket.SocketType) -> str:
    """The client's IP address ("" for a socket without one, such as a socket pair)."""
    try:
        address = sock.getpeername()
    except OSError:
        return ""
    return str(address[0]) if isinstance(address, tuple) else ""


async def _receive(
    sock: trio.socket.SocketType,
    core: ConnectionCore,
    need: NeedData,
    config: ConnectionConfig,
    drain: Drain,
) -> None:
    """Read once; when nothing is there, wait until readable, the deadline, or a drain."""
    try:
        data: bytes | None = os.read(sock.fileno(), config.recv_size)
    except BlockingIOError:
        data = None
    except OSError:
        data = b""  # reset by the peer: the same end as a close
    if data is None:
        # Waited outside the `except`, which would keep the exception and its traceback
        # alive for as long as the connection waits.
        with trio.CancelScope(deadline=need.deadline) as scope:
            if need.idle:
                drain.idle_scopes.add(scope)
            try:
                await trio.lowlevel.wait_readable(sock)
            finally:
                drain.idle_scopes.discard(scope)
        return
    # The bytes were already there: still yield once per read, for fairness and so
    # that cancellation is seen.
    await trio.lowlevel.checkpoint()
    core.receive(data)


async def _respond(
    sock: trio.socket.SocketType,
    core: ConnectionCore,
    handler: Handler,
    request: Request,
    config: ConnectionConfig,
    observe: Observer | None,
    on_exhausted: Callable[[], None] | None,
) -> bool:
    """Answer one request; False when the write failed and the connection is dead."""
    started = trio.current_time()
    try:
        response = await handler(request)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in FD_EXHAUSTED:
            if on_exhausted is not None:
                on_exhausted()
            response = unavailable("out of file descriptors; retry later")
        else:
            log.exception("handler failed", extra={"path": request.path})
            response = error_response(500, "UNSUPPORTED", "internal error", close=True)
    close = core.closes_after(response.close)
    sent = 0
    try:
        sent = await _write(sock, request, response, close, config.stall_timeout)
    except _CONNECTION_ERRORS as exc:
        log.debug("response cut short", extra={"path": request.path, "error": repr(exc)})
        if isinstance(exc, SourceShort | Preempted):
            _reset(sock)
        return False
    except BodyIntegrityError as exc:
        log.warning("response reset: wrong bytes", extra={"path": request.path, "error": str(exc)})
        _reset(sock)
        return False
    # A body fed from another layer (a peer relay) fails in its own ways; the head is
    # already out with its Content-Length, so closing short is unambiguous: the
    # client sees an unexpected EOF, and containerd reopens at its offset then
    # (a reset fails its pull instead: remotes/docker/httpreadseeker.go).
    except Exception as exc:  # noqa: BLE001
        log.warning("response aborted", extra={"path": request.path, "error": repr(exc)})
        return False
    finally:
        response.release()
        if observe is not None:
            observe(request, response, sent, trio.current_time() - started)
    core.response_sent(trio.current_time())
    return True


def _reset(sock: trio.socket.SocketType) -> None:
    """Make the coming close a reset (RST): for a body whose bytes cannot be trusted,
    or a local file lost under it (a peer reading a download in progress)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


_LINGER_RESET = struct.pack("ii", 1, 0)


async def _write(
    sock: trio.socket.SocketType,
    request: Request,
    response: Response,
    close: bool,
    stall_timeout: float,
) -> int:
    """Write the head and, unless HEAD, the body; returns the body bytes sent."""
    head = response_head(response.status, response.headers, response.length, close=close)
    body = response.body
    if request.method == "HEAD":
        await send_all(sock, head, stall_timeout=stall_timeout)
        return 0
    if isinstance(body, bytes):
        await send_all(sock, head + body, stall_timeout=stall_timeout)
        return len(body)
    await send_all(sock, head, more=True, stall_timeout=stall_timeout)
    await body.send(sock, stall_timeout)
    return body.length


async def _send_error_quietly(sock: trio.socket.SocketType, error: SendError) -> None:
    response = error_response(error.status, error.code, error.message, close=True)
    head = response_head(error.status, response.headers, response.length, close=True)
    assert isinstance(response.body, bytes)
    with trio.move_on_after(1.0), contextlib.suppress(*_CONNECTION_ERRORS):
        await send_all(sock, head + response.body)


def refusal_bytes(message: str) -> bytes:
    """A whole 503 answer with `Retry-After` and `Connection: close`, for a connection
    turned away before any request of it was read."""
    response = unavailable(message)
    head = response_head(503, response.headers, response.length, close=True)
    assert isinstance(response.body, bytes)
    return head + response.body
