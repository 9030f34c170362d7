"""Finding the first peers: static lists, DNS names, HTTP, as Spegel's `--bootstrap-kind`.

A bootstrapper only names candidate addresses; the node pings them, and
retries with backoff until one answers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

Address = tuple[str, int]
_MAX_RESPONSE = 64 * 1024


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {text}")
    return port


def parse_peer_address(text: str, default_port: int | None = None) -> Address:
    """`host:port`, `[v6]:port`, `host` (with `default_port`), or a multiaddr
    such as `/ip4/10.0.0.1/udp/5001` or `/ip4/10.0.0.1/tcp/5001/p2p/<id>`;
    only the address and the port are taken. The host may be a DNS name."""
    text = text.strip()
    if not text:
        raise ValueError("empty peer address")
    if text.startswith("/"):
        return _parse_multiaddr(text, default_port)
    if text.startswith("["):
        return _parse_bracketed(text, default_port)
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return _canonical(host or "0.0.0.0"), _port(port_text)
    if default_port is None:  # a bare IPv6 address, or a bare host, needs a default
        raise ValueError(f"no port in {text!r}")
    return _canonical(text), default_port


def _parse_multiaddr(text: str, default_port: int | None) -> Address:
    parts = text.split("/")[1:]
    host: str | None = None
    port: int | None = None
    for proto, value in zip(parts[::2], parts[1::2], strict=False):
        if proto in ("ip4", "ip6", "dns", "dns4", "dns6") and host is None:
            host = value
        elif proto in ("udp", "tcp") and port is None:
            port = _port(value)
    if host is None:
        raise ValueError(f"no address in multiaddr {text!r}")
    if port is None:
        if default_port is None:
            raise ValueError(f"no port in multiaddr {text!r}")
        port = default_port
    return _canonical(host), port


def _parse_bracketed(text: str, default_port: int | None) -> Address:
    host, sep, rest = text[1:].partition("]")
    if not sep:
        raise ValueError(f"unterminated IPv6 address in {text!r}")
    if rest.startswith(":"):
        return _canonical(host), _port(rest[1:])
    if rest or default_port is None:
        raise ValueError(f"bad peer address {text!r}")
    return _canonical(host), default_port


def parse_listen_address(text: str) -> Address:
    """Like parse_peer_address, where port 0 (any free port) is allowed: `:8080`, `host:0`."""
    if text.endswith(":0"):
        return parse_peer_address(text[:-2] + ":1")[0], 0
    return parse_peer_address(text)


def _canonical(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c in host for c in "/ \t[]"):
            raise ValueError(f"bad host {host!r}") from None
        return host


async def resolve(host: str, port: int) -> list[Address]:
    """IPv4 and IPv6 addresses of `host` (an IP literal resolves to itself)."""
    try:
        return [(str(ipaddress.ip_address(host)), port)]
    except ValueError:
        pass
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    out: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = (str(ipaddress.ip_address(sockaddr[0])), port)
        if address not in out:
            out.append(address)
    return out


class Bootstrapper(Protocol):
    async def peers(self, own: Address) -> list[Address]:
        """Candidate peer addresses (IP literals); `own` is this node's router address."""
        ...

    async def serve(
        self,
        own: Callable[[], Address],
        *,
        task_status: trio.TaskStatus[Address | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Whatever this kind runs for the others (an HTTP server); returns at once if nothing."""
        ...


class _NothingToServe:
    async def serve(
        self,
        own: Callable[[], Address],
        *,
        task_status: trio.TaskStatus[Address | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started(None)


class StaticBootstrapper(_NothingToServe):
    """A fixed list of `host:port` or multiaddr strings."""

    def __init__(self, peers: Iterable[str]) -> None:
        self.addresses = [parse_peer_address(p) for p in peers]

    async def peers(self, own: Address) -> list[Address]:
        out: list[Address] = []
        for host, port in self.addresses:
            try:
                resolved = await resolve(host, port)
            except OSError:
                continue
            out.extend(a for a in resolved if a not in out)
        return out


class DnsBootstrapper(_NothingToServe):
    """The A and AAAA records of a name (a headless Service), on our own router port."""

    def __init__(self, domain: str, port: int | None = None) -> None:
        self.domain = domain
        self.port = port

    async def peers(self, own: Address) -> list[Address]:
        try:
            return await resolve(self.domain, self.port or own[1])
        except OSError:
            return []


class HttpBootstrapper:
    """GET `peer_url` for a JSON list of addresses; with `serve_addr`, also serve
    this node's own address there (`[\"host:port\"]`) for the others."""

    def __init__(
        self, peer_url: str | None, serve_addr: str | None = None, *, timeout: float = 5.0
    ) -> None:
        self.peer_url = peer_url
        self.serve_addr = parse_listen_address(serve_addr) if serve_addr else None
        self.timeout = timeout
        self.bound_address: Address | None = None  # where the server listens, once started

    async def peers(self, own: Address) -> list[Address]:
        if not self.peer_url:
            return []
        try:
            with trio.fail_after(self.timeout):
                server_ip, body = await http_get(self.peer_url)
        except (OSError, ValueError, trio.TooSlowError):
            return []
        out: list[Address] = []
        for text in parse_address_list(body):
            try:
                host, port = parse_peer_address(text, default_port=own[1])
            except ValueError:
                continue
            if host in ("0.0.0.0", "::"):  # the server did not know its own address
                host = server_ip
            try:
                resolved = await resolve(host, port)
            except OSError:
                continue
            out.extend(a for a in resolved if a not in out)
        return out

    async def serve(
        self,
        own: Callable[[], Address],
        *,
        task_status: trio.TaskStatus[Address | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self.serve_addr is None:
            task_status.started(None)
            return

        def body() -> bytes:
            host, port = own()
            text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            return json.dumps([text]).encode()

        async with trio.open_nursery() as nursery:
            self.bound_address = await nursery.start(serve_http, self.serve_addr, body)
            task_status.started(self.bound_address)


def parse_address_list(body: bytes) -> list[str]:
    """A JSON list of strings, a JSON string, or plain text with one address a line."""
    text = body.decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except ValueError:
        return [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


# -- a tiny HTTP/1.1 GET client and server ---------------------------------------


async def http_get(url: str) -> tuple[str, bytes]:
    """GET an http:// URL; returns (the server's IP, the body) of a 200 answer.

    No deadline of its own: callers run it under a cancel scope."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http URL: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode()
    buf = bytearray()
    stream = await trio.open_tcp_stream(parts.hostname, parts.port or 80)
    async with stream:
        server_ip = str(stream.socket.getpeername()[0])
        await stream.send_all(request)
        while len(buf) <= _MAX_RESPONSE:
            chunk = await stream.receive_some(16384)
            if not chunk:
                break
            buf += chunk
    head, sep, body = bytes(buf).partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("incomplete HTTP response")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "200":
        raise ValueError(f"HTTP bootstrap answered {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return server_ip, _dechunk(body)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if len(body) < length:
            raise ValueError("truncated HTTP body")
        return server_ip, body[:length]
    return server_ip, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            raise ValueError("bad chunked body")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2 :]


async def serve_http(
    listen: Address,
    body: Callable[[], bytes],
    *,
    task_status: trio.TaskStatus[Address | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer every GET with `body()` as JSON; reports the bound address when started."""
    host, port = listen
    bind_host = None if host in ("0.0.0.0", "::") else host
    listeners = await trio.open_tcp_listeners(port, host=bind_host)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):
                head = bytearray()
                while b"\r\n\r\n" not in head and len(head) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    head += chunk
                method = bytes(head).split(b" ", 1)[0]
                if method == b"GET":
                    payload, status = body(), b"200 OK"
                else:
                    payload, status = b"", b"405 Method Not Allowed"
                await stream.send_all(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(payload)).encode() + b"\r\n"
                    b"Connection: close\r\n\r\n" + payload
                )

    bound = listeners[0].socket.getsockname()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        task_status.started((str(bound[0]), int(bound[1])))
