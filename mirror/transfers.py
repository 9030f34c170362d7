"""Bodies being sent now, with the bytes the client has so far, read when someone asks.

An answer appears in the live feed only once its body ends, so a multi-GB layer
would show nothing for minutes. Progress costs the hot path nothing per chunk:
when a large body starts, its socket and the kernel's count of the bytes the
client acknowledged on it (`TCP_INFO`, `tcpi_bytes_acked`) are noted, once; a
reader (the debug page, `mirror watch`, at most a few times a second) asks the
kernel again and subtracts. Small bodies end before anyone could look and are
not tracked. The table holds one entry per body being sent, so it is bounded by
the registry port's connection cap; a reader gets at most `limit` of them.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from mirror.server.response import Body

# Bodies smaller than this are not tracked (at 1 GbE, 1 MiB takes ~8 ms).
TRACK_FROM = 1024 * 1024
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a __u64 at byte 120 (Linux >= 4.1).
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120
_TCP_INFO_SIZE = 256
_TCP_INFO = getattr(socket, "TCP_INFO", 11)


def bytes_acked(sock: trio.socket.SocketType) -> int | None:
    """How many bytes the peer has acknowledged on `sock`; None when unknown."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:
        return None
    return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0])


@dataclass(slots=True)
class Transfer:
    """One body being sent: what, to whom, from where, and how far along."""

    id: int
    kind: str  # "blob" | "manifest"
    path: str
    registry: str
    client: str  # "containerd" | "peer" | "measure"
    source: str  # "local" | "peer" | "inflight"
    peer: str  # the peer it comes from (source "peer") or goes to (client "peer")
    length: int
    started: float = 0.0  # wall clock, once the body starts
    sock: trio.socket.SocketType | None = None
    baseline: int | None = None  # bytes acknowledged on the socket when the body started

    def sent(self) -> int | None:
        """Body bytes the client has acknowledged so far (None: the kernel cannot say)."""
        if self.sock is None or self.baseline is None:
            return None
        now = bytes_acked(self.sock)
        if now is None:
            return None
        return max(0, min(self.length, now - self.baseline))

    def to_json(self, now: float) -> dict[str, Any]:
        inner = self.path.partition("?")[0].removeprefix("/v2/")
        repository, _, reference = inner.rpartition("/")
        repository = repository.rsplit("/", 1)[0]  # drop "blobs" / "manifests"
        sent = self.sent()
        return {
            "id": self.id,
            "kind": self.kind,
            "registry": self.registry,
            "repository": repository,
            "reference": reference,
            "client": self.client,
            "source": self.source,
            "peer": self.peer,
            "length": self.length,
            "bytes": sent,
            "seconds": max(0.0, now - self.started),
        }


@dataclass(slots=True)
class TrackedBody:
    """A `Body` that is listed in its `Transfers` while it is being sent."""

    inner: Body
    length: int
    transfer: Transfer
    table: Transfers

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None:
        self.table.begin(self.transfer, sock)
        try:
            await self.inner.send(sock, stall_timeout)
        finally:
            self.table.end(self.transfer)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Transfers:
    clock: Callable[[], float] = time.time
    _active: dict[int, Transfer] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __len__(self) -> int:
        return len(self._active)

    def track(self, body: Body, transfer: Transfer) -> TrackedBody:
        return TrackedBody(body, body.length, transfer, self)

    def next_id(self) -> int:
        return next(self._ids)

    def begin(self, transfer: Transfer, sock: trio.socket.SocketType) -> None:
        transfer.started = self.clock()
        transfer.sock = sock
        transfer.baseline = bytes_acked(sock)
        self._active[transfer.id] = transfer

    def end(self, transfer: Transfer) -> None:
        self._active.pop(transfer.id, None)
        transfer.sock = None  # the connection closes it; never read it again

    def snapshot(self, limit: int = 50) -> list[dict[str, Any]]:
        """The `limit` oldest bodies being sent, oldest first, with bytes so far."""
        now = self.clock()
        oldest = itertools.islice(self._active.values(), limit)  # dicts keep start order
        return [transfer.to_json(now) for transfer in oldest]
