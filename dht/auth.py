"""The cluster key: sealed datagrams with a timestamp and a nonce, and the replay guard.

A sealed datagram is

    payload || timestamp (uint64 ms, wall clock) || nonce (8 bytes) || tag (16 bytes)

where the tag is a keyed BLAKE2b of everything before it. A receiver accepts a
sealed datagram once: its timestamp must lie within `REPLAY_WINDOW` of its own
clock and its nonce must not have been seen within that window. Pure: the
caller passes the wall-clock time and the nonce (from an unguessable source).
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import hmac

TAG_SIZE = 16
STAMP_SIZE = 16  # timestamp and nonce
SEAL_SIZE = STAMP_SIZE + TAG_SIZE
REPLAY_WINDOW = 30.0  # seconds either side of our clock; cluster clocks must agree this well
REPLAY_CAPACITY = 65_536  # nonces remembered; past this the window narrows, it never opens
_MAX_KEY = 64  # hashlib.blake2b accepts keys of up to 64 bytes
_NONCE_BITS = 64


class Refusal(enum.Enum):
    UNAUTHENTICATED = "unauthenticated"  # no tag, or a wrong one
    STALE = "stale"  # stamped outside the replay window
    REPLAYED = "replayed"  # a nonce seen within the window


class ReplayGuard:
    """Remembers the nonces of accepted datagrams while their timestamps are in the window.

    Memory is bounded: beyond `capacity` nonces the oldest is forgotten and
    every datagram stamped at or before it is refused from then on (`floor`),
    so a forgotten nonce can never be replayed. Under a flood of authentic
    traffic the window narrows; it never opens."""

    __slots__ = ("_floor", "_order", "_seen", "capacity", "window_ms")

    def __init__(self, window: float = REPLAY_WINDOW, capacity: int = REPLAY_CAPACITY) -> None:
        self.window_ms = round(window * 1000)
        self.capacity = capacity
        self._seen: set[int] = set()
        # (timestamp << 64 | nonce): one int per entry, ordered by timestamp.
        self._order: list[int] = []
        self._floor = -1

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, stamp: int, nonce: int, now_ms: int) -> Refusal | None:
        """None (and remember the nonce) if the datagram is fresh; else why not."""
        window = self.window_ms
        if stamp <= self._floor or not now_ms - window <= stamp <= now_ms + window:
            return Refusal.STALE
        if nonce in self._seen:
            return Refusal.REPLAYED
        order, seen = self._order, self._seen
        low = (now_ms - window) << _NONCE_BITS
        while order and order[0] < low:
            seen.discard(heapq.heappop(order) & ((1 << _NONCE_BITS) - 1))
        if len(order) >= self.capacity:
            oldest = heapq.heappop(order)
            seen.discard(oldest & ((1 << _NONCE_BITS) - 1))
            self._floor = max(self._floor, oldest >> _NONCE_BITS)
        heapq.heappush(order, stamp << _NONCE_BITS | nonce)
        seen.add(nonce)
        return None


class Authenticator:
    """Seals outgoing datagrams and opens incoming ones.

    Without a key, `seal` and `open` pass datagrams through unchanged (and
    nothing stops a replay: the open DHT authenticates nobody)."""

    __slots__ = ("_key", "guard")

    def __init__(self, key: bytes | None, guard: ReplayGuard | None = None) -> None:
        if key is not None:
            if not key:
                raise ValueError("an empty cluster key is not a key")
            if len(key) > _MAX_KEY:
                key = hashlib.blake2b(key).digest()
        self._key = key
        self.guard = guard if guard is not None else ReplayGuard()

    @property
    def enabled(self) -> bool:
        return self._key is not None

    @property
    def overhead(self) -> int:
        return SEAL_SIZE if self._key is not None else 0

    def seal(self, payload: bytes, wall: float, nonce: int) -> bytes:
        """`payload` stamped with the wall-clock time `wall` and `nonce` (64 bits), and tagged."""
        key = self._key
        if key is None:
            return payload
        stamped = payload + max(0, int(wall * 1000)).to_bytes(8, "big") + nonce.to_bytes(8, "big")
        return stamped + hashlib.blake2b(stamped, key=key, digest_size=TAG_SIZE).digest()

    def open(self, datagram: bytes, wall: float) -> bytes | Refusal:
        """The payload of an authentic, fresh datagram received at `wall`; else why not."""
        key = self._key
        if key is None:
            return datagram
        if len(datagram) <= SEAL_SIZE:
            return Refusal.UNAUTHENTICATED
        stamped, tag = datagram[:-TAG_SIZE], datagram[-TAG_SIZE:]
        expected = hashlib.blake2b(stamped, key=key, digest_size=TAG_SIZE).digest()
        if not hmac.compare_digest(tag, expected):
            return Refusal.UNAUTHENTICATED
        stamp = int.from_bytes(stamped[-STAMP_SIZE:-8], "big")
        nonce = int.from_bytes(stamped[-8:], "big")
        refusal = self.guard.check(stamp, nonce, int(wall * 1000))
        if refusal is not None:
            return refusal
        return stamped[:-STAMP_SIZE]
