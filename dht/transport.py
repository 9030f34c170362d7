"""The UDP socket: non-blocking sends and receives, address forms. Trio.

- The socket is a plain non-blocking stdlib socket driven with the
  try-once-then-wait pattern, so a datagram costs one syscall and no extra
  scheduling when the kernel is ready (the common case on a quiet socket).
- Replies to incoming requests get a single non-blocking attempt: if the send
  buffer is full the reply is dropped (the requester times out), so a slow
  send never stalls receiving. Requests that find the buffer full wait in a
  backlog that one task flushes when the socket is writable: one writer.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections import deque
from dataclasses import dataclass

import trio

from .messages import MAX_DATAGRAM

Address = tuple[str, int]


@dataclass(slots=True)
class SocketCounters:
    datagrams_out: int = 0
    dropped_replies: int = 0  # replies not sent because the socket buffer was full
    send_errors: int = 0
    receive_errors: int = 0


@functools.lru_cache(maxsize=8192)
def canonical_host(host: str) -> str:
    """The canonical text of an IP address; IPv4-mapped IPv6 addresses become IPv4."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def open_udp_socket(host: str, port: int) -> socket.socket:
    """A bound non-blocking UDP socket; `host` is an IP literal (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        sock.bind((host or "0.0.0.0", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def sockaddr_for(ipv4_only: bool, host: str, port: int) -> Address | None:
    """The destination as the socket takes it; None if it cannot reach it."""
    if ipv4_only:
        return None if ":" in host else (host, port)
    return (host if ":" in host else "::ffff:" + host), port


class UdpSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._ipv4_only = sock.family == socket.AF_INET
        self._backlog: deque[tuple[bytes, Address]] = deque()
        self._writable = trio.lowlevel.ParkingLot()
        self.counters = SocketCounters()

    @property
    def local_address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return canonical_host(host), port

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()

    def _send_now(self, data: bytes, sockaddr: Address) -> bool | None:
        """One attempt: True if sent, False on a hard error, None if it would block."""
        try:
            self.sock.sendto(data, sockaddr)
        except BlockingIOError:
            return None
        except OSError:
            self.counters.send_errors += 1
            return False
        self.counters.datagrams_out += 1
        return True

    def send_reply(self, address: Address, data: bytes) -> None:
        sockaddr = sockaddr_for(self._ipv4_only, *address)
        if sockaddr is None:
            self.counters.send_errors += 1
        elif self._send_now(data, sockaddr) is None:
            self.counters.dropped_replies += 1

    def send_request(self, address: Address, data: bytes) -> bool:
        """False if it cannot be sent; a full socket queues it in order."""
        sockaddr = sockaddr_for(self._ipv4_only, *address)
        if sockaddr is None:
            self.counters.send_errors += 1
            return False
        if self._backlog:
            self._backlog.append((data, sockaddr))
            return True
        sent = self._send_now(data, sockaddr)
        if sent is None:
            self._backlog.append((data, sockaddr))
            self._writable.unpark_all()
            return True
        return sent

    async def flush_loop(self) -> None:
        """Send what found the socket full, as it drains (a late request just times out)."""
        while True:
            while not self._backlog:
                await self._writable.park()
            await trio.lowlevel.wait_writable(self.sock)
            while self._backlog:
                data, sockaddr = self._backlog[0]
                if self._send_now(data, sockaddr) is None:
                    break
                self._backlog.popleft()

    def receive_now(self) -> tuple[bytes, Address] | None:
        """One datagram if one is there (None if none, or on an error)."""
        try:
            data, source = self.sock.recvfrom(MAX_DATAGRAM + 1)
        except BlockingIOError:
            return None
        except OSError:
            self.counters.receive_errors += 1
            return None
        return data, (source[0], source[1])
