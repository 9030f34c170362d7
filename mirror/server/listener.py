"""The registry port: listening sockets, the accept loop, admission, and a graceful stop.

Every connection is accepted at once and placed by `Admission` (`admission.py`):
served, or past the limits in the lobby (a probe is answered, anything else gets
503 with `Retry-After`), or refused. So the kubelet's probes are answered while one
client holds all the slots it may and while the port holds all it may: the probe
never waits behind a full backlog.

Running out of file descriptors is met, not spun on: `accept` failing with
EMFILE/ENFILE hands a descriptor kept spare for it to the next waiting connection,
which is answered 503 and closed (so clients are told, and the listening socket
stops being readable); without a spare the loop backs off. A handler running out
(`open_blob`, a proof's `dup`) answers 503 with `Retry-After` (`connection.py`).
After a flood drains, the memory it took is handed back (`reclaim.py`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket
import struct
from collections import Counter
from dataclasses import replace

import trio

from mirror.server.admission import (
    DEFAULT_CLIENT_CONNECTIONS,
    SERVE,
    Admission,
    Limits,
    Seat,
    Verdict,
)
from mirror.server.connection import (
    FD_EXHAUSTED,
    ConnectionConfig,
    Drain,
    Handler,
    Observer,
    refusal_bytes,
    serve_connection,
)
from mirror.server.reclaim import Reclaimer
from mirror.server.request import Request
from mirror.server.response import Response, unavailable

log = logging.getLogger("mirror.server")

# Trio lowers TCP_NOTSENT_LOWAT on the streams it makes; bulk sendfile wants the
# kernel's default (no limit) so one wake-up can move megabytes.
_NOTSENT_LOWAT_UNLIMITED = struct.pack("I", 0xFFFFFFFF)

# The lobby reads one request: the kubelet's probe sends its head at once.
LOBBY_TIMEOUT = 2.0
PROBE_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
_ACCEPT_BACKOFF_MAX = 1.0
_SPARE_RETRY = 0.05
_WARN_EVERY = 10.0

REFUSAL_MESSAGES = {
    "client": "this client holds as many connections as it may; retry later",
    "capacity": "the registry port holds as many connections as it may; retry later",
    "descriptors": "out of file descriptors; retry later",
}


def parse_listen_address(addr: str) -> tuple[str | None, int]:
    """`:5000`, `0.0.0.0:5000`, `127.0.0.2:5000`, `[::1]:5000` -> (host or None, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {addr!r}: expected [host]:port")
    host = host.strip("[]")
    return (host or None), int(port)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def tune_client_socket(sock: trio.socket.SocketType) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, _NOTSENT_LOWAT_UNLIMITED)


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class RegistryServer:
    """Serves `handler` on the registry port until `stop()`; then drains in-flight requests."""

    def __init__(
        self,
        handler: Handler,
        config: ConnectionConfig | None = None,
        *,
        limits: Limits | None = None,
        client_connections: int = DEFAULT_CLIENT_CONNECTIONS,
        grace_period: float = 30.0,
        observe: Observer | None = None,
    ) -> None:
        self._handler = handler
        self._config = config or ConnectionConfig()
        self._lobby_config = replace(
            self._config,
            head_timeout=LOBBY_TIMEOUT,
            idle_timeout=LOBBY_TIMEOUT,
            stall_timeout=LOBBY_TIMEOUT,
            recv_size=4096,
        )
        self._observe = observe
        self._grace_period = grace_period
        self.limits = limits or Limits.for_descriptors(raise_fd_limit(), client_connections)
        self._admission = Admission(self.limits)
        # Turned away, by reason: "client", "capacity", "descriptors".
        self.refused: Counter[str] = Counter()
        self._lobby_handlers = {
            reason: self._lobby_handler(reason) for reason in ("client", "capacity")
        }
        self._drain = Drain()
        self._accepting = trio.CancelScope()
        self._connections: trio.Nursery | None = None
        # The lobby's connections by ticket: what closes one, and why it is there.
        self._lobby_scopes: dict[int, tuple[trio.CancelScope, str]] = {}
        self._spare: int | None = None
        self._spare_lost = trio.Event()
        self._warned_at = -_WARN_EVERY
        self.reclaimer = Reclaimer()
        self.addresses: list[tuple[str, int]] = []

    @property
    def open_connections(self) -> int:
        """Connections being served now (the lobby's short-lived ones aside)."""
        return self._admission.serving

    async def run(
        self,
        host: str | None,
        port: int,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
        self.addresses = [ls.socket.getsockname()[:2] for ls in listeners]
        self._spare = _open_spare()
        try:
            async with trio.open_nursery() as connections:
                self._connections = connections
                with self._accepting:
                    async with trio.open_nursery() as accepts:
                        for listener in listeners:
                            accepts.start_soon(self._accept_loop, listener.socket, connections)
                        accepts.start_soon(self.reclaimer.run, lambda: self._admission.serving)
                        accepts.start_soon(self._keep_spare)
                        task_status.started()
                for listener in listeners:
                    await listener.aclose()
                connections.cancel_scope.deadline = trio.current_time() + self._grace_period
        finally:
            if self._spare is not None:
                os.close(self._spare)
                self._spare = None

    def stop(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their response."""
        self._accepting.cancel()
        self._drain.start()

    async def _accept_loop(
        self, listen_sock: trio.socket.SocketType, nursery: trio.Nursery
    ) -> None:
        backoff = 0.0
        while True:
            try:
                sock, address = await listen_sock.accept()
            except OSError as exc:
                if exc.errno in FD_EXHAUSTED and await self._shed(listen_sock, nursery):
                    backoff = 0.0
                    continue
                if exc.errno == errno.ECONNABORTED:
                    continue
                if exc.errno not in FD_EXHAUSTED:
                    log.warning("accept failed", extra={"error": repr(exc)})
                backoff = min(max(backoff * 2, 0.01), _ACCEPT_BACKOFF_MAX)
                await trio.sleep(backoff)
                continue
            backoff = 0.0
            self._place(sock, address, nursery)

    def _reopen_spare(self) -> None:
        self._spare = _open_spare()
        if self._spare is None:
            self._spare_lost.set()

    async def _keep_spare(self) -> None:
        """A spare that could not be reopened (another thread of this process took the
        descriptor just freed) is taken back as soon as one frees, not only at the next
        accepted connection: that one may come while none is free, and would then wait
        in the backlog with no spare to tell it 503."""
        while True:
            await self._spare_lost.wait()
            self._spare_lost = trio.Event()
            while self._spare is None:
                await trio.sleep(_SPARE_RETRY)
                self._spare = _open_spare()

    def _place(self, sock: trio.socket.SocketType, address: object, nursery: trio.Nursery) -> None:
        if self._spare is None:
            self._reopen_spare()
        client = address[0] if isinstance(address, tuple) else ""
        verdict = self._admission.admit(client)
        if verdict.seat is Seat.SERVE:
            nursery.start_soon(self._serve, sock, client)
        elif verdict.seat is Seat.LOBBY:
            if verdict.evict is not None:
                self._evict(verdict.evict)
            scope = trio.CancelScope()
            self._lobby_scopes[verdict.ticket] = (scope, verdict.reason)
            nursery.start_soon(self._lobby, sock, client, verdict, scope)
        else:
            self.refused[verdict.reason] += 1
            _refuse(sock, verdict.reason)
        self.reclaimer.opened(self._admission.serving)

    async def _shed(self, listen_sock: trio.socket.SocketType, nursery: trio.Nursery) -> bool:
        """Out of descriptors. A failed accept does not say that a connection waits: wait
        for one (so the loop never spins), try again, and if descriptors are still short
        hand it the spare one to tell it 503. False when there is no spare to hand."""
        self.exhausted()
        await trio.lowlevel.wait_readable(listen_sock)
        try:
            sock, address = await listen_sock.accept()
        except OSError as exc:
            if exc.errno not in FD_EXHAUSTED:
                return exc.errno == errno.ECONNABORTED
        else:
            self._place(sock, address, nursery)
            return True
        if self._spare is None:
            return False
        os.close(self._spare)
        self._spare = None
        try:
            # Tried at once (Trio yields only after the call): nothing else of this
            # process can take the descriptor just closed in between.
            sock, _ = await listen_sock.accept()
        except OSError:
            self._reopen_spare()
            return False
        self.refused["descriptors"] += 1
        _refuse(sock, "descriptors")
        self._reopen_spare()
        return True

    def exhausted(self) -> None:
        """Out of file descriptors somewhere on the request path: counted, logged now
        and then (never a traceback: the answer is a 503 or a close)."""
        now = trio.current_time()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(
                "out of file descriptors: answering 503 until some are free",
                extra={
                    "open_connections": self._admission.serving,
                    "connection_limit": self.limits.connections,
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                },
            )

    def _handler_exhausted(self) -> None:
        self.refused["descriptors"] += 1
        self.exhausted()

    async def _serve(self, sock: trio.socket.SocketType, client: str) -> None:
        try:
            tune_client_socket(sock)
            await serve_connection(
                sock,
                self._handler,
                self._config,
                self._drain,
                self._observe,
                on_exhausted=self._handler_exhausted,
            )
        except Exception:
            # One connection's failure must never end the server.
            log.exception("connection failed")
        finally:
            self._admission.release(client, SERVE)

    async def _lobby(
        self,
        sock: trio.socket.SocketType,
        client: str,
        verdict: Verdict,
        scope: trio.CancelScope,
    ) -> None:
        """Past a limit: one request, a probe answered or 503 for the rest, then close."""
        try:
            with scope:
                await serve_connection(
                    sock,
                    self._lobby_handlers[verdict.reason],
                    self._lobby_config,
                    self._drain,
                    self._observe_probe,
                    on_exhausted=self._handler_exhausted,
                )
        except Exception:
            log.exception("connection failed")
        finally:
            self._lobby_scopes.pop(verdict.ticket, None)
            self._admission.release(client, verdict)

    def _evict(self, ticket: int) -> None:
        """Close the lobby connection that waited longest, to make room (it was already
        taken out of the admission's counts)."""
        waiting = self._lobby_scopes.pop(ticket, None)
        if waiting is not None:
            scope, reason = waiting
            scope.cancel()
            self.refused[reason] += 1

    def _lobby_handler(self, reason: str) -> Handler:
        async def lobby(request: Request) -> Response:
            if request.path in PROBE_PATHS:
                response = await self._handler(request)
            else:
                self.refused[reason] += 1
                response = unavailable(REFUSAL_MESSAGES[reason])
            response.close = True
            return response

        return lobby

    def _observe_probe(
        self, request: Request, response: Response, sent: int, seconds: float
    ) -> None:
        # Only the probes went through the (instrumented) handler.
        if self._observe is not None and request.path in PROBE_PATHS:
            self._observe(request, response, sent, seconds)


def _refuse(sock: trio.socket.SocketType, reason: str) -> None:
    """Tell a connection there is no room, if its socket takes the bytes now, and close."""
    with sock, contextlib.suppress(OSError):
        os.write(sock.fileno(), refusal_bytes(REFUSAL_MESSAGES[reason]))
