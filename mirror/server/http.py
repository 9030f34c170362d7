"""HTTP/1.1 response heads and OCI error bodies, written by hand (pure)."""

from __future__ import annotations

import json
import time
from email.utils import formatdate

REASONS = {
    200: "OK",
    206: "Partial Content",
    307: "Temporary Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

ERROR_MESSAGES = {
    "BLOB_UNKNOWN": "blob unknown to registry",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "NAME_INVALID": "invalid repository name",
    "NAME_UNKNOWN": "repository name not known to registry",
    "DIGEST_INVALID": "provided digest did not match uploaded content",
    "TAG_INVALID": "manifest tag did not match URI",
    "UNSUPPORTED": "the operation is unsupported",
    "RANGE_INVALID": "invalid content range",
    "DENIED": "requested access to the resource is denied",
    "UNAUTHORIZED": "authentication required",
}

JSON_TYPE = "application/json"
API_VERSION_HEADER = ("Docker-Distribution-Api-Version", "registry/2.0")


class _DateCache:
    """The `Date` header changes once a second; format it once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_date = _DateCache()


def response_head(
    status: int, headers: list[tuple[str, str]], content_length: int, *, close: bool
) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Unknown").encode()),
        b"Date: " + _date.value() + b"\r\n",
        b"Content-Length: %d\r\n" % content_length,
    ]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def error_body(code: str, message: str | None = None, detail: object = None) -> bytes:
    error: dict[str, object] = {"code": code, "message": message or ERROR_MESSAGES.get(code, code)}
    if detail is not None:
        error["detail"] = detail
    return json.dumps({"errors": [error]}, separators=(",", ":")).encode()
