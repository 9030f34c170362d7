"""Small HTTP helpers for tests: well-formed requests and raw bytes on a socket."""

from __future__ import annotations

import email
import email.policy
import hashlib
import http.client
import json
import socket
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> object:
        return json.loads(self.body)

    def error_code(self) -> str:
        document = self.json()
        assert isinstance(document, dict)
        return str(document["errors"][0]["code"])

    def sha256(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


def fetch(
    address: str, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def raw_exchange(address: str, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data`, then read until the server closes (or `timeout`)."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def byteranges(reply: Reply) -> list[tuple[str, bytes]]:
    """The parts of a `multipart/byteranges` answer: (Content-Range, bytes) each, parsed
    by the standard library's MIME parser (not by the code under test)."""
    content_type = reply.header("Content-Type") or ""
    assert content_type.startswith("multipart/byteranges; boundary="), content_type
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + reply.body,
        policy=email.policy.HTTP,
    )
    assert message.is_multipart()
    return [
        (str(part["Content-Range"]), part.get_payload(decode=True)) for part in message.iter_parts()
    ]
