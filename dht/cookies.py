"""Return-routability cookies: proof that a request's source address receives datagrams.

A node hands a requester a cookie, a keyed hash of the requester's address
(IP and port) under a secret that changes every `COOKIE_EPOCH`; the requester
puts it in its later requests to that node. A request carrying a valid cookie
comes from an address that received the cookie, so its source is not spoofed.
Until then the node answers no more bytes than the request has (no
amplification towards a spoofed address) and, without a cluster key, changes
no state for it. Issuing is stateless; pure: the caller passes `now` and an
unguessable random source.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import random

from .messages import BoundedCache, pack_ip

COOKIE_SIZE = 8
COOKIE_EPOCH = 300.0  # a cookie is valid for the epoch it was issued in and the next one
JAR_SIZE = 8192  # addresses whose cookie a node keeps

Address = tuple[str, int]


class Validity(enum.Enum):
    INVALID = 0  # missing, forged, for another address, or too old
    PREVIOUS = 1  # valid, issued in the previous epoch: hand out a fresh one
    CURRENT = 2


class CookieIssuer:
    __slots__ = ("_rng", "_secrets", "epoch")

    def __init__(self, rng: random.Random, epoch: float = COOKIE_EPOCH) -> None:
        self._rng = rng
        self.epoch = epoch
        self._secrets: dict[int, bytes] = {}

    def _secret(self, index: int, create: bool) -> bytes | None:
        secret = self._secrets.get(index)
        if secret is None and create:
            secret = self._rng.getrandbits(256).to_bytes(32, "big")
            self._secrets = {i: s for i, s in self._secrets.items() if i == index - 1}
            self._secrets[index] = secret
        return secret

    @staticmethod
    def _mac(secret: bytes, host: str, port: int) -> bytes:
        data = pack_ip(host) + port.to_bytes(2, "big")
        return hashlib.blake2b(data, key=secret, digest_size=COOKIE_SIZE).digest()

    def issue(self, host: str, port: int, now: float) -> bytes:
        secret = self._secret(int(now // self.epoch), create=True)
        assert secret is not None
        return self._mac(secret, host, port)

    def check(self, cookie: bytes | None, host: str, port: int, now: float) -> Validity:
        if cookie is None:
            return Validity.INVALID
        index = int(now // self.epoch)
        for validity, at in ((Validity.CURRENT, index), (Validity.PREVIOUS, index - 1)):
            secret = self._secret(at, create=False)
            if secret is not None and hmac.compare_digest(cookie, self._mac(secret, host, port)):
                return validity
        return Validity.INVALID


class CookieJar:
    """The cookies other nodes gave us, by their address; one older than an epoch
    may have lapsed at its issuer and is not used (the request is padded instead)."""

    __slots__ = ("_cookies", "epoch")

    def __init__(self, epoch: float = COOKIE_EPOCH, size: int = JAR_SIZE) -> None:
        self.epoch = epoch
        self._cookies: BoundedCache[Address, tuple[bytes, float]] = BoundedCache(size)

    def __len__(self) -> int:
        return len(self._cookies)

    def get(self, address: Address, now: float) -> bytes | None:
        held = self._cookies.get(address)
        if held is None or now - held[1] >= self.epoch:
            return None
        return held[0]

    def put(self, address: Address, cookie: bytes, now: float) -> None:
        self._cookies.put(address, (cookie, now))

    def forget(self, address: Address) -> None:
        self._cookies.pop(address, None)
