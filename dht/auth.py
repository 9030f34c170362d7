"""Optional cluster key: a keyed BLAKE2b tag appended to every datagram."""

from __future__ import annotations

import hashlib
import hmac

TAG_SIZE = 16
_MAX_KEY = 64  # hashlib.blake2b accepts keys of up to 64 bytes


class Authenticator:
    """Seals outgoing datagrams with a tag and opens incoming ones.

    Without a key, `seal` and `open` pass datagrams through unchanged.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None) -> None:
        if key is not None:
            if not key:
                raise ValueError("an empty cluster key is not a key")
            if len(key) > _MAX_KEY:
                key = hashlib.blake2b(key).digest()
        self._key = key

    @property
    def enabled(self) -> bool:
        return self._key is not None

    @property
    def overhead(self) -> int:
        return TAG_SIZE if self._key is not None else 0

    @staticmethod
    def _tag(key: bytes, payload: bytes) -> bytes:
        return hashlib.blake2b(payload, key=key, digest_size=TAG_SIZE).digest()

    def seal(self, payload: bytes) -> bytes:
        if self._key is None:
            return payload
        return payload + self._tag(self._key, payload)

    def open(self, datagram: bytes) -> bytes | None:
        """The payload of an authentic datagram, or None."""
        if self._key is None:
            return datagram
        if len(datagram) <= TAG_SIZE:
            return None
        payload, tag = datagram[:-TAG_SIZE], datagram[-TAG_SIZE:]
        if not hmac.compare_digest(tag, self._tag(self._key, payload)):
            return None
        return payload
