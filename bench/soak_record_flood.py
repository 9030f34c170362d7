"""A provider-record flood from a cluster member, for `bench soak`.

A member holds the cluster key, so every datagram is authentic and reaches the
node's provider store: the store's bounds, not the key, must hold it. Records
come under fresh node ids and keys, from several source addresses, at most
`count` datagrams at no more than `rate` a second.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence

from dht.auth import Authenticator
from dht.messages import AddProvider, Envelope, encode

KEYS_PER_DATAGRAM = 16


class RecordFlood:
    def __init__(
        self,
        cluster_key: bytes,
        target: tuple[str, int],
        *,
        sources: Sequence[str],
        count: int,
        rate: int,
    ) -> None:
        self._auth = Authenticator(cluster_key)
        self._target = target
        self._sources = list(sources)
        self._count = count
        self._rate = rate
        self.sent = 0

    def _datagram(self, n: int, source: tuple[str, int]) -> bytes:
        keys = tuple(os.urandom(16) for _ in range(KEYS_PER_DATAGRAM))
        host, port = source
        message = AddProvider(host, port, 5000, keys)
        envelope = Envelope(n & 0xFFFFFFFF, os.urandom(16), message)
        nonce = int.from_bytes(os.urandom(8), "big")
        return self._auth.seal(encode(envelope), time.time(), nonce)

    def run(self, stop: threading.Event) -> None:
        socks = []
        try:
            for host in self._sources:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((host, 0))
                sock.setblocking(False)
                socks.append(sock)
            started = time.monotonic()
            while self.sent < self._count and not stop.is_set():
                due = int((time.monotonic() - started) * self._rate)
                if self.sent >= due:
                    time.sleep(0.001)
                    continue
                sock = socks[self.sent % len(socks)]
                try:
                    sock.sendto(self._datagram(self.sent, sock.getsockname()), self._target)
                except BlockingIOError:
                    time.sleep(0.001)
                    continue
                self.sent += 1
        finally:
            for sock in socks:
                sock.close()
