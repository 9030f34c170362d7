"""The registry port: listening sockets, the accept loop, and a graceful stop."""

from __future__ import annotations

import contextlib
import logging
import resource
import socket
import struct

import trio

from mirror.server.connection import ConnectionConfig, Drain, Handler, Observer, serve_connection

log = logging.getLogger("mirror.server")

# Trio lowers TCP_NOTSENT_LOWAT on the streams it makes; bulk sendfile wants the
# kernel's default (no limit) so one wake-up can move megabytes.
_NOTSENT_LOWAT_UNLIMITED = struct.pack("I", 0xFFFFFFFF)


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


class RegistryServer:
    """Serves `handler` on the registry port until `stop()`; then drains in-flight requests."""

    def __init__(
        self,
        handler: Handler,
        config: ConnectionConfig | None = None,
        *,
        max_connections: int | None = None,
        grace_period: float = 30.0,
        observe: Observer | None = None,
    ) -> None:
        self._handler = handler
        self._config = config or ConnectionConfig()
        self._observe = observe
        self._grace_period = grace_period
        limit = max_connections or max(64, min(16384, raise_fd_limit() - 256))
        self._slots = trio.Semaphore(limit)
        self._drain = Drain()
        self._accepting = trio.CancelScope()
        self._connections: trio.Nursery | None = None
        self.addresses: list[tuple[str, int]] = []
        self.open_connections = 0

    async def run(
        self,
        host: str | None,
        port: int,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
        self.addresses = [ls.socket.getsockname()[:2] for ls in listeners]
        async with trio.open_nursery() as connections:
            self._connections = connections
            with self._accepting:
                async with trio.open_nursery() as accepts:
                    for listener in listeners:
                        accepts.start_soon(self._accept_loop, listener.socket, connections)
                    task_status.started()
            for listener in listeners:
                await listener.aclose()
            connections.cancel_scope.deadline = trio.current_time() + self._grace_period

    def stop(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their response."""
        self._accepting.cancel()
        self._drain.start()

    async def _accept_loop(
        self, listen_sock: trio.socket.SocketType, nursery: trio.Nursery
    ) -> None:
        while True:
            await self._slots.acquire()
            try:
                sock, _ = await listen_sock.accept()
            except OSError as exc:
                self._slots.release()
                log.warning("accept failed", extra={"error": repr(exc)})
                await trio.sleep(0.05)
                continue
            except BaseException:
                self._slots.release()
                raise
            nursery.start_soon(self._serve, sock)

    async def _serve(self, sock: trio.socket.SocketType) -> None:
        self.open_connections += 1
        try:
            tune_client_socket(sock)
            await serve_connection(sock, self._handler, self._config, self._drain, self._observe)
        except Exception:
            # One connection's failure must never end the server.
            log.exception("connection failed")
        finally:
            self.open_connections -= 1
            self._slots.release()
