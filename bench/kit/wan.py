"""An emulated WAN link: a shaping TCP relay in front of a registry, on loopback.

`netem` is not available on these machines, so both the bandwidth cap and the
round-trip delay are done in user space: every byte crossing the relay waits
for a shared token bucket (one per direction, as a full-duplex link has) and
then for a fixed one-way delay before it is written on. A new connection pays
one round trip before its first byte crosses, as a TCP handshake would.

The relay runs its own `trio.run` in a thread so that the synchronous kit can
start it, read its byte counters and stop it. It binds loopback addresses only.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass

import trio

from bench.kit.procs import KitError, StartStop
from mirror.server.pacing import TokenBucket

MB = 1_000_000
CHUNK = 64 * 1024


@dataclass(frozen=True)
class LinkSpec:
    """A symmetric link: `rate` bytes/s each way (0 = unlimited), `rtt` seconds round trip."""

    rate: float = 100 * MB
    rtt: float = 0.020

    @property
    def one_way(self) -> float:
        return self.rtt / 2

    def describe(self) -> str:
        rate = "unlimited" if self.rate <= 0 else f"{self.rate / MB:g} MB/s"
        return f"{rate} each way, {self.rtt * 1000:g} ms round trip"


def queue_chunks(link: LinkSpec, chunk: int = CHUNK) -> int:
    """Chunks a direction buffers: one bandwidth-delay product, plus slack."""
    if link.rate <= 0:
        return 64
    return math.ceil(link.rate * link.one_way / chunk) + 2


@dataclass(frozen=True)
class LinkCounters:
    down: int  # bytes the upstream sent (what the registry served)
    up: int  # bytes clients sent
    connections: int


class _Direction:
    def __init__(self, link: LinkSpec) -> None:
        self.bucket = (
            TokenBucket(link.rate, max(2 * CHUNK, link.rate / 1000), trio.current_time())
            if link.rate > 0
            else None
        )
        self.bytes = 0


class WanRelay(StartStop):
    """Listens on `host:port` and relays each connection to `upstream` over the emulated link."""

    def __init__(
        self, upstream: tuple[str, int], link: LinkSpec, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if not host.startswith("127.") or not upstream[0].startswith("127."):
            raise ValueError("the WAN relay binds and dials loopback addresses only")
        self.upstream = upstream
        self.link = link
        self.host = host
        self.port = port
        self.connections = 0
        self._down: _Direction | None = None
        self._up: _Direction | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def counters(self) -> LinkCounters:
        down = self._down.bytes if self._down else 0
        up = self._up.bytes if self._up else 0
        return LinkCounters(down=down, up=up, connections=self.connections)

    def start(self, timeout: float = 10.0) -> None:
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="wan-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise KitError(f"WAN relay failed to start: {self._error!r}")

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)
        self._thread = None

    def _run(self) -> None:
        try:
            trio.run(self._main)
        # The relay thread's boundary: what ends trio.run is kept for start() to report.
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._down, self._up = _Direction(self.link), _Direction(self.link)
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
            self.port = listeners[0].socket.getsockname()[1]
            self._ready.set()
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        assert self._down is not None and self._up is not None
        self.connections += 1
        async with client:
            # The SYN / SYN-ACK exchange: the client's first byte can cross one RTT from now.
            await trio.sleep(self.link.rtt)
            try:
                upstream = await trio.open_tcp_stream(*self.upstream)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._direction, client, upstream, self._up, nursery)
                nursery.start_soon(self._direction, upstream, client, self._down, nursery)

    async def _direction(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        direction: _Direction,
        nursery: trio.Nursery,
    ) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](queue_chunks(self.link))
        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(self._read_side, src, send, direction)
                inner.start_soon(self._write_side, receive, dst)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            # One side reset: the other direction has nothing left to do either. (The
            # nursery groups its errors: a plain `except` missed them, and one reset
            # client took the whole relay down.)
            nursery.cancel_scope.cancel()

    async def _read_side(
        self,
        src: trio.SocketStream,
        send: trio.MemorySendChannel[tuple[float, bytes]],
        direction: _Direction,
    ) -> None:
        async with send:
            while True:
                data = await src.receive_some(CHUNK)
                direction.bytes += len(data)
                if data and direction.bucket is not None:
                    await trio.sleep(direction.bucket.reserve(len(data), trio.current_time()))
                await send.send((trio.current_time() + self.link.one_way, data))
                if not data:
                    return

    async def _write_side(
        self, receive: trio.MemoryReceiveChannel[tuple[float, bytes]], dst: trio.SocketStream
    ) -> None:
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                if not data:
                    await dst.send_eof()
                    return
                await dst.send_all(data)
