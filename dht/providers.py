"""Provider records: those held for other nodes (with a validity window), and the
schedule on which a node re-provides its own keys.

Pure data structures; the caller passes the current time.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable

import xxhash

from .ids import key_id
from .messages import Provider

DEFAULT_RECORD_TTL = 19 * 60.0
DEFAULT_REPROVIDE_INTERVAL = 15 * 60.0
DEFAULT_INFLIGHT_TTL = 30.0


class ProviderStore:
    """Records this node holds for others: key id -> provider node id -> (provider, expiry)."""

    def __init__(
        self,
        ttl: float = DEFAULT_RECORD_TTL,
        *,
        max_per_key: int = 256,
        max_records: int = 1_000_000,
        rng: random.Random | None = None,
    ) -> None:
        self.ttl = ttl
        self._rng = rng or random.Random()
        self.max_per_key = max_per_key
        self.max_records = max_records
        self._records: dict[bytes, dict[bytes, tuple[Provider, float]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, key: bytes, provider: Provider, now: float, ttl: float | None = None) -> bool:
        """Store or refresh a record (for `ttl`, default the store's); False when full.

        An in-flight record (`provider.progress` set) does not replace a live
        complete one of the same node; a complete record replaces an in-flight one."""
        expires = now + (self.ttl if ttl is None else ttl)
        per_key = self._records.get(key)
        if per_key is None:
            if self._count >= self.max_records:
                return False
            per_key = self._records[key] = {}
        held = per_key.get(provider.node_id)
        if held is not None:
            if provider.inflight and not held[0].inflight and held[1] > now:
                return True
            per_key[provider.node_id] = (provider, expires)
            return True
        if len(per_key) >= self.max_per_key or self._count >= self.max_records:
            return False
        per_key[provider.node_id] = (provider, expires)
        self._count += 1
        return True

    def get(self, key: bytes, now: float, limit: int | None = None) -> list[Provider]:
        """Live providers of `key`, in random order so that different holders
        answer with different subsets when there are more than fit a datagram."""
        per_key = self._records.get(key)
        if not per_key:
            return []
        live = [p for p, expiry in per_key.values() if expiry > now]
        if limit is not None and len(live) > limit:
            live = self._rng.sample(live, limit)
        else:
            self._rng.shuffle(live)
        live.sort(key=lambda p: p.inflight)  # complete holders first (a stable sort)
        return live

    def expire(self, now: float) -> int:
        """Drop lapsed records; returns how many went."""
        removed = 0
        for key in list(self._records):
            per_key = self._records[key]
            stale = [node_id for node_id, (_, expiry) in per_key.items() if expiry <= now]
            for node_id in stale:
                del per_key[node_id]
            removed += len(stale)
            if not per_key:
                del self._records[key]
        self._count -= removed
        return removed


class ReprovideSchedule:
    """The keys this node provides, each due for re-providing once per `interval`.

    A key first announced at t is re-provided at t + phase, then every
    `interval`, where phase in (0, interval] comes from a hash of the key:
    a batch of thousands of keys provided at once is re-provided spread evenly
    over the interval, not in a burst, and the gap between two announcements
    of a key never exceeds `interval` (shorter than the record validity).
    """

    def __init__(self, interval: float = DEFAULT_REPROVIDE_INTERVAL) -> None:
        self.interval = interval
        self._due: dict[str, float] = {}  # key -> when it is next due
        self._ids: dict[bytes, str] = {}  # key id -> key
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: str) -> bool:
        return key in self._due

    def has_id(self, kid: bytes) -> bool:
        return kid in self._ids

    def keys(self) -> list[str]:
        return list(self._due)

    def _phase(self, key: str) -> float:
        return (xxhash.xxh64_intdigest(key.encode()) + 1) / 2**64 * self.interval

    def add(self, keys: Iterable[str], now: float) -> list[str]:
        """Start providing keys; returns those that were not provided yet."""
        new = []
        for key in keys:
            if key in self._due:
                continue
            due = now + self._phase(key)
            self._due[key] = due
            self._ids[key_id(key)] = key
            heapq.heappush(self._heap, (due, key))
            new.append(key)
        return new

    def remove(self, keys: Iterable[str]) -> list[str]:
        """Stop providing keys (their heap entries are dropped lazily)."""
        gone = []
        for key in keys:
            if self._due.pop(key, None) is not None:
                self._ids.pop(key_id(key), None)
                gone.append(key)
        return gone

    def next_due(self) -> float | None:
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[str]:
        """Keys due at `now`, each rescheduled one interval after it was due
        (or after `now`, if the caller fell more than an interval behind)."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if self._due.get(key) != due:
                continue
            out.append(key)
            following = due + self.interval
            if following <= now:
                following = now + self.interval
            self._due[key] = following
            heapq.heappush(heap, (following, key))
        return out
