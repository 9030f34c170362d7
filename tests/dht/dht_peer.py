"""A hand-driven peer for tests of one node core: it speaks as a real node does
(a cookie once it has one, padding until then, a seal with a cluster key)."""

from __future__ import annotations

import itertools

from dht.auth import Authenticator
from dht.core import NodeCore, Send
from dht.messages import Envelope, Message, Retry, decode, encode, reply_room


class Peer:
    def __init__(
        self, node_id: bytes, host: str, port: int = 5001, key: bytes | None = None
    ) -> None:
        self.node_id = node_id
        self.host = host
        self.port = port
        self.auth = Authenticator(key)
        self.cookies: dict[tuple[str, int], bytes] = {}
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)

    def datagram(
        self, message: Message, to: tuple[str, int], now: float, request_id: int | None = None
    ) -> bytes:
        """A request as this peer would send it to `to` at `now` (wall clock = `now`)."""
        cookie = self.cookies.get(to)
        budget = 1200 - self.auth.overhead
        pad = 0 if cookie is not None else reply_room(message, budget)
        rid = next(self._ids) if request_id is None else request_id
        payload = encode(Envelope(rid, self.node_id, message, cookie), budget, pad)
        return self.auth.seal(payload, now, next(self._nonces))

    def open(self, data: bytes, now: float) -> Envelope:
        payload = self.auth.open(data, now)
        assert isinstance(payload, bytes), payload
        return decode(payload)

    def send(self, core: NodeCore, message: Message, now: float) -> list[Send]:
        """Deliver one request to `core`; every datagram it sends then."""
        core.receive(self.datagram(message, core.bound, now), self.host, self.port, now)
        return [c for c in core.take_commands() if isinstance(c, Send)]

    def ask(self, core: NodeCore, message: Message, now: float) -> Envelope:
        """A request answered, after the RETRY a first request may get: the reply."""
        for _ in range(2):
            to_us = [
                s for s in self.send(core, message, now) if s.address == (self.host, self.port)
            ]
            [reply] = to_us
            envelope = self.open(reply.data, now)
            if envelope.cookie is not None:
                self.cookies[core.bound] = envelope.cookie
            if not isinstance(envelope.message, Retry):
                return envelope
        raise AssertionError("asked twice, told to retry twice")
