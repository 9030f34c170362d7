"""Incremental HTTP/1.1 request-head parsing with `httptools`, within fixed bounds.

Only heads matter here: the registry serves GET and HEAD, so a request that carries
a body is answered and then the connection is closed instead of reading the body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote_plus

import httptools


@dataclass(frozen=True, slots=True)
class Limits:
    max_url: int = 8 * 1024
    max_head: int = 16 * 1024
    max_headers: int = 100


@dataclass(slots=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    keep_alive: bool
    has_body: bool
    # The client's address (host only), set by the connection: who asked, for metrics.
    client: str = ""
    path: str = field(init=False)
    query: str = field(init=False)

    def __post_init__(self) -> None:
        self.path, _, self.query = self.target.partition("?")

    def query_param(self, name: str) -> str | None:
        """The first value of `name`, percent-decoded (Go clients send `ns=host%3A5000`)."""
        for pair in self.query.split("&"):
            key, _, value = pair.partition("=")
            if key == name:
                return unquote_plus(value)
        return None


class HeadError(Exception):
    """The head cannot be served: `status` is the answer to send before closing."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestParser:
    """Feed bytes, get complete request heads; raises HeadError on bad or oversized input."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self._limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self._ready: list[Request] = []
        self._reset_head()
        self._unfinished_bytes = 0
        self._completed_heads = 0
        self.in_head = False

    def _reset_head(self) -> None:
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._head_size = 0
        self._header_count = 0

    def release(self) -> None:
        """Break the cycle between this object and the httptools parser holding its
        bound methods, so both are freed at once; no feeding after this."""
        del self._parser

    def feed(self, data: bytes) -> list[Request]:
        completed_before = self._completed_heads
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The head is complete; an upgrade is never granted, and httptools parses
            # nothing after it, so that request is answered and the connection closed.
            pass
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, HeadError):
                raise cause from None
            raise HeadError(400, "malformed request") from None
        # httptools buffers a header line internally until it ends, so bound the
        # bytes fed while one head stays unfinished.
        if self.in_head and self._completed_heads == completed_before:
            self._unfinished_bytes += len(data)
            if self._unfinished_bytes > self._limits.max_head:
                raise HeadError(431, "request head too large")
        else:
            self._unfinished_bytes = 0
        ready, self._ready = self._ready, []
        return ready

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.in_head = True
        self._reset_head()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_url:
            raise HeadError(414, "request target too long")
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_headers:
            raise HeadError(431, "too many header fields")
        self._count(len(name) + len(value))
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._completed_heads += 1
        parser = self._parser
        if parser.get_http_version() not in ("1.1", "1.0"):
            raise HeadError(505, "only HTTP/1.x is served")
        headers = self._headers
        has_body = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
        method = parser.get_method().decode("ascii", "replace")
        upgrade = method == "CONNECT" or "upgrade" in headers
        self._ready.append(
            Request(
                method=method,
                target=self._url.decode("latin-1"),
                headers=headers,
                keep_alive=bool(parser.should_keep_alive()) and not has_body and not upgrade,
                has_body=has_body,
            )
        )

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._limits.max_head:
            raise HeadError(431, "request head too large")
