"""HTTP/1.1 requests to a peer's registry port, on raw Trio sockets.

Only the response head is parsed (`httptools`); the body is left on the socket
for the relay to move. Peers are instances of this same program, so a body is
always `Content-Length`-delimited.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import httptools
import trio

from mirror.oci.mediatypes import MAX_MANIFEST_SIZE
from mirror.oci.ranges import BEYOND_ANY_SIZE, parse_decimal
from mirror.server.io import send_all
from mirror.server.sendfailures import PeerStalled

MAX_HEAD = 16 * 1024


class PeerError(Exception):
    """The peer could not be reached or answered with something unusable."""


class PeerUnreachable(PeerError):
    """The connection was refused or had no route: nobody serves at that address
    (a record left by a node that is gone, or forged)."""


@dataclass(slots=True)
class PeerResponse:
    status: int
    headers: dict[str, str]
    sock: trio.socket.SocketType
    # Body bytes that arrived in the same reads as the head.
    early_body: bytes = b""
    content_length: int = 0
    where: tuple[str, int] = ("", 0)  # the peer's host and registry port

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def close(self) -> None:
        self.sock.close()


@dataclass(slots=True)
class HeadCollector:
    """httptools callbacks gathering a response's head (names lowercased) and any body
    bytes fed after it."""

    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_body(self, body: bytes) -> None:
        self.body += body


async def request_head(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    *,
    recv_size: int = 64 * 1024,
) -> PeerResponse:
    """Connect, send the request, read the response head. Deadlines are the caller's."""
    sock = await connect(host, port)
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in headers]
        await send_all(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        collector = HeadCollector()
        parser = httptools.HttpResponseParser(collector)
        received = 0
        while not collector.complete:
            data = await sock.recv(recv_size)
            if not data:
                raise PeerError("peer closed the connection before the response head")
            received += len(data)
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise PeerError(f"malformed response: {exc}") from None
            if received > MAX_HEAD and not collector.complete:
                raise PeerError("response head too large")
        length = parse_decimal(collector.headers.get("content-length") or "")
        if length is None or length >= BEYOND_ANY_SIZE:
            raise PeerError("response without a usable Content-Length")
        return PeerResponse(
            parser.get_status_code(),
            collector.headers,
            sock,
            bytes(collector.body),
            length,
            (host, port),
        )
    except OSError as exc:
        sock.close()
        raise PeerError(f"{host}:{port}: {exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise


async def connect(host: str, port: int) -> trio.socket.SocketType:
    """A TCP connection to a peer, Nagle off (PeerUnreachable: nobody answered there)."""
    try:
        sock = trio.socket.socket(
            trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET, trio.socket.SOCK_STREAM
        )
    except OSError as exc:
        raise PeerError(f"socket: {exc}") from exc
    try:
        sock.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
        try:
            await sock.connect((host, port))
        except OSError as exc:
            raise PeerUnreachable(f"{host}:{port}: {exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise
    return sock


async def read_whole_body(peer: PeerResponse, stall_timeout: float) -> bytes:
    """A manifest or small blob, read whole (at most MAX_MANIFEST_SIZE bytes)."""
    if peer.content_length > MAX_MANIFEST_SIZE:
        raise PeerError("manifest too large")
    body = bytearray(peer.early_body[: peer.content_length])
    while len(body) < peer.content_length:
        with trio.move_on_after(stall_timeout) as scope:
            data = await peer.sock.recv(min(65536, peer.content_length - len(body)))
        if scope.cancelled_caught:
            raise PeerStalled(f"peer sent nothing for {stall_timeout}s")
        if not data:
            raise PeerError("peer closed mid-body")
        body += data
    return bytes(body)
