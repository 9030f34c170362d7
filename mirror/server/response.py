"""What a handler returns: status, headers and a body that knows how to send itself."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import trio

from mirror.oci.mediatypes import BLOB_CONTENT_TYPE
from mirror.oci.ranges import ByteRange
from mirror.server.http import API_VERSION_HEADER, JSON_TYPE, error_body
from mirror.server.io import send_all, send_file
from mirror.server.pacing import Pacer


class Body(Protocol):
    """A body too large to hold in memory; sent after the head, closed in every case."""

    length: int

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class FileBody:
    """A byte range of an open file, sent with `sendfile` (no copy through Python)."""

    fd: int
    offset: int
    length: int
    pacer: Pacer | None = None

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None:
        await send_file(
            sock, self.fd, self.offset, self.length, stall_timeout=stall_timeout, pacer=self.pacer
        )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(slots=True)
class MultipartFileBody:
    """Several byte ranges of an open file as one `multipart/byteranges` body: each
    part's head, then the part with `sendfile`."""

    fd: int
    parts: list[tuple[bytes, ByteRange]]  # (the part's head, its range)
    closing: bytes
    pacer: Pacer | None = None
    length: int = 0

    def __post_init__(self) -> None:
        self.length = len(self.closing) + sum(len(h) + r.length for h, r in self.parts)

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None:
        for head, byte_range in self.parts:
            await send_all(sock, head, stall_timeout=stall_timeout)
            await send_file(
                sock,
                self.fd,
                byte_range.start,
                byte_range.length,
                stall_timeout=stall_timeout,
                pacer=self.pacer,
            )
        await send_all(sock, self.closing, stall_timeout=stall_timeout)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def multipart_body(
    fd: int, ranges: list[ByteRange], size: int, content_type: str, boundary: str
) -> MultipartFileBody:
    """RFC 9110's multipart/byteranges: every part after a CRLF, its own head, and a
    closing delimiter."""
    parts = [
        (
            (
                f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n"
                f"Content-Range: {r.content_range(size)}\r\n\r\n"
            ).encode("latin-1"),
            r,
        )
        for r in ranges
    ]
    return MultipartFileBody(fd, parts, f"\r\n--{boundary}--\r\n".encode("latin-1"))


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | Body = b""
    close: bool = False
    # What the access log and metrics call this request ("blob", "manifest", ...).
    handler: str = "other"
    # Where the content came from: "local", "peer", or "" when there was none.
    source: str = ""
    # The Content-Length of a HEAD answer whose body is not at hand (a peer's).
    declared_length: int | None = None
    # A local miss handed to the peer mirror, served or not (what Spegel counts as a
    # mirror request: hit or miss).
    mirrored: bool = False

    @property
    def length(self) -> int:
        if self.declared_length is not None:
            return self.declared_length
        return len(self.body) if isinstance(self.body, bytes) else self.body.length

    def release(self) -> None:
        if not isinstance(self.body, bytes):
            self.body.close()


def blob_headers(digest: str) -> list[tuple[str, str]]:
    """The head of a blob answer (before any Content-Range)."""
    return [
        ("Content-Type", BLOB_CONTENT_TYPE),
        ("Docker-Content-Digest", digest),
        API_VERSION_HEADER,
        ("Accept-Ranges", "bytes"),
    ]


def range_not_satisfiable(size: int, handler: str) -> Response:
    """416 with the size the range missed, as RFC 9110 asks."""
    response = error_response(416, "RANGE_INVALID", "range not satisfiable", handler=handler)
    response.headers.append(("Content-Range", f"bytes */{size}"))
    return response


def unavailable(
    message: str, *, retry_after: int = 1, close: bool = True, handler: str = "other"
) -> Response:
    """503 with `Retry-After`: busy now, ask again (or ask another source)."""
    response = error_response(503, "TOOMANYREQUESTS", message, close=close, handler=handler)
    response.headers.append(("Retry-After", str(retry_after)))
    return response


def error_response(
    status: int,
    code: str,
    message: str | None = None,
    *,
    close: bool = False,
    handler: str = "other",
) -> Response:
    return Response(
        status,
        [("Content-Type", JSON_TYPE), API_VERSION_HEADER],
        error_body(code, message),
        close=close,
        handler=handler,
    )
