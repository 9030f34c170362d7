"""Provider records: those held for other nodes (with a validity window), and the
schedule on which a node re-provides its own keys.

Pure data structures; the caller passes the current time.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable
from typing import Any

import xxhash

from .ids import key_id
from .messages import Provider

DEFAULT_RECORD_TTL = 19 * 60.0
DEFAULT_REPROVIDE_INTERVAL = 15 * 60.0
DEFAULT_INFLIGHT_TTL = 30.0

# Bounds on what other nodes can make this one store (about 190 bytes a record:
# 200,000 records is about 40 MiB, which a 128 MiB pod holds beside the rest).
MAX_RECORDS = 200_000
MAX_PER_HOST = 25_000  # records naming one host: an eighth of the table
MAX_PER_KEY = 256
MAX_PER_KEY_PER_HOST = 4  # several instances may share a host; hundreds of ids there are sybils
EXPIRY_SLOT = 5.0  # seconds: records are dropped at this granularity (`get` is exact)
EXPIRY_BATCH = 2048  # records examined per `expire` call

# A key's records: [key, provider, expiry, provider, expiry, ...]: the layout that
# costs least memory (a list of pairs would cost a tuple per record). The key
# itself heads the list so that the time wheel refers to that one bytes object.
_Flat = list[Any]


class ProviderStore:
    """Records this node holds for others, bounded per key, per host and in total.

    Lapsed records are found through a time wheel of keys by expiry slot, a
    bounded batch at a time (`expire`), never by walking the whole table. A
    record counts against the host it names (the datagram's verified source,
    or the address inside a sealed datagram)."""

    def __init__(
        self,
        ttl: float = DEFAULT_RECORD_TTL,
        *,
        max_per_key: int = MAX_PER_KEY,
        max_per_key_per_host: int = MAX_PER_KEY_PER_HOST,
        max_per_host: int = MAX_PER_HOST,
        max_records: int = MAX_RECORDS,
        rng: random.Random | None = None,
        slot: float = EXPIRY_SLOT,
        batch: int = EXPIRY_BATCH,
    ) -> None:
        self.ttl = ttl
        self._rng = rng or random.Random()
        self.max_per_key = max_per_key
        self.max_per_key_per_host = max_per_key_per_host
        self.max_per_host = max_per_host
        self.max_records = max_records
        self.slot = slot
        self.batch = batch
        self._records: dict[bytes, _Flat] = {}
        self._hosts: dict[str, int] = {}
        self._count = 0
        self._wheel: dict[int, list[bytes]] = {}  # slot -> keys with a record lapsing in it
        self._slots: list[int] = []  # the wheel's slots, a heap
        self.refused = 0

    def __len__(self) -> int:
        return self._count

    def records_of(self, host: str) -> int:
        """How many records name `host`."""
        return self._hosts.get(host, 0)

    def add(self, key: bytes, provider: Provider, now: float, ttl: float | None = None) -> bool:
        """Store or refresh a record (for `ttl`, default the store's); False when refused.

        An in-flight record (`provider.progress` set) does not replace a live
        complete one of the same node; a complete record replaces an in-flight one."""
        return self.add_many((key,), provider, now, ttl) == 1

    def add_many(
        self, keys: Iterable[bytes], provider: Provider, now: float, ttl: float | None = None
    ) -> int:
        """`add` for several keys of one provider; how many were stored."""
        expires = now + (self.ttl if ttl is None else ttl)  # one float for the whole batch
        stored = 0
        for key in keys:
            if self._add(key, provider, now, expires):
                stored += 1
            else:
                self.refused += 1
        return stored

    def _room(self, host: str) -> bool:
        return self._count < self.max_records and self._hosts.get(host, 0) < self.max_per_host

    def _count_in(self, host: str) -> None:
        self._count += 1
        self._hosts[host] = self._hosts.get(host, 0) + 1

    def _count_out(self, host: str) -> None:
        self._count -= 1
        left = self._hosts[host] - 1
        if left:
            self._hosts[host] = left
        else:
            del self._hosts[host]

    def _add(self, key: bytes, provider: Provider, now: float, expires: float) -> bool:
        held = self._records.get(key)
        host = provider.host
        if held is None:
            if not self._room(host):
                return False
            held = self._records[key] = [key, provider, expires]
            self._count_in(host)
            self._schedule(held[0], expires)
            return True
        node_id = provider.node_id
        same_host = 0
        found = 0
        for i in range(1, len(held), 2):
            p = held[i]
            if p.node_id == node_id:
                found = i
            elif p.host == host and held[i + 1] > now:
                same_host += 1
        if found:
            return self._replace(held, found, provider, now, expires, same_host)
        if (
            len(held) // 2 >= self.max_per_key
            or same_host >= self.max_per_key_per_host
            or not self._room(host)
        ):
            return False
        held += (provider, expires)
        self._count_in(host)
        self._schedule(held[0], expires)
        return True

    def _replace(
        self, held: _Flat, i: int, provider: Provider, now: float, expires: float, same_host: int
    ) -> bool:
        old = held[i]
        if provider.inflight and not old.inflight and held[i + 1] > now:
            return True
        if old.host != provider.host:
            if same_host >= self.max_per_key_per_host or not self._room(provider.host):
                return False
            self._count_out(old.host)
            self._count_in(provider.host)
        held[i], held[i + 1] = provider, expires
        self._schedule(held[0], expires)
        return True

    def _schedule(self, key: bytes, expires: float) -> None:
        slot = math.ceil(expires / self.slot)
        keys = self._wheel.get(slot)
        if keys is None:
            self._wheel[slot] = [key]
            heapq.heappush(self._slots, slot)
        elif keys[-1] is not key:  # one provider's batch of keys: no duplicate in a row
            keys.append(key)

    def get(self, key: bytes, now: float, limit: int | None = None) -> list[Provider]:
        """Live providers of `key`: complete before in-flight, one per host before a
        host's second, otherwise in random order, so that different holders answer
        with different subsets when there are more than fit a datagram, and a
        crowd of records naming one host does not hide the other hosts."""
        held = self._records.get(key)
        if not held:
            return []
        live: list[Provider] = [held[i] for i in range(1, len(held), 2) if held[i + 1] > now]
        self._rng.shuffle(live)
        seen: set[str] = set()
        ranked = []
        for p in live:
            ranked.append((p.inflight, p.host in seen, p))
            seen.add(p.host)
        ranked.sort(key=lambda item: (item[0], item[1]))  # stable: shuffled within each rank
        out = [p for _, _, p in ranked]
        return out if limit is None else out[:limit]

    def next_expiry(self) -> float:
        """When `expire` has work to do (inf with no record)."""
        return self._slots[0] * self.slot if self._slots else math.inf

    def expire(self, now: float, budget: int | None = None) -> int:
        """Drop lapsed records, examining about `budget` records at most (default
        `batch`): call again while `next_expiry() <= now`. How many went."""
        budget = self.batch if budget is None else budget
        removed = work = 0
        wheel, slots = self._wheel, self._slots
        while slots and slots[0] * self.slot <= now:
            keys = wheel[slots[0]]
            while keys:
                if work >= budget:
                    return removed
                held = self._records.get(keys.pop())
                work += 1 if held is None else len(held) // 2
                if held is not None:
                    removed += self._drop_lapsed(held, now)
            del wheel[heapq.heappop(slots)]
        return removed

    def _drop_lapsed(self, held: _Flat, now: float) -> int:
        keep: _Flat = [held[0]]
        for i in range(1, len(held), 2):
            if held[i + 1] > now:
                keep += held[i : i + 2]
            else:
                self._count_out(held[i].host)
        removed = (len(held) - len(keep)) // 2
        if len(keep) > 1:
            held[:] = keep
        else:
            del self._records[held[0]]
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
