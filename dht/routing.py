"""The routing table: k-buckets with a replacement cache and a stale-contact policy.

One bucket per distance bit length (a "full" Kademlia table, 128 buckets, made
on first use). Inside a bucket, contacts are kept least recently seen first.

Stale contacts (Kademlia paper, section 4.1): a contact that fails to answer is
replaced at once by the freshest contact of the replacement cache; with no
replacement at hand it stays, flagged, until it has failed `max_failures` times
in a row, so that a short outage does not flush the table.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .ids import ID_BITS, id_to_int, int_to_id
from .messages import Contact


@dataclass(slots=True)
class _Entry:
    contact: Contact
    key: int
    last_seen: float
    failures: int = 0


@dataclass(slots=True)
class _Bucket:
    entries: dict[bytes, _Entry] = field(default_factory=dict)  # oldest first
    replacements: dict[bytes, _Entry] = field(default_factory=dict)  # newest last
    last_touched: float = 0.0


class RoutingTable:
    def __init__(
        self,
        own_id: bytes,
        k: int = 20,
        *,
        max_failures: int = 3,
        questionable_after: float = 60.0,
    ) -> None:
        self.own_id = own_id
        self.k = k
        self.max_failures = max_failures
        self.questionable_after = questionable_after
        self._own = id_to_int(own_id)
        self._buckets: list[_Bucket | None] = [None] * ID_BITS
        self._where: dict[bytes, int] = {}  # node id -> bucket index, for contacts in buckets

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self._where

    def _index(self, key: int) -> int:
        return (self._own ^ key).bit_length() - 1

    def observe(self, contact: Contact, now: float) -> Contact | None:
        """Record that `contact` answered or sent us a request.

        Returns the least recently seen contact of a full bucket when the new
        contact had to wait in the replacement cache and that one has not been
        heard from for a while: the caller should ping it, and report a
        failure if it does not answer.
        """
        node_id = contact.node_id
        if node_id == self.own_id:
            return None
        key = id_to_int(node_id)
        index = self._index(key)
        bucket = self._buckets[index]
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        bucket.last_touched = now
        entry = bucket.entries.pop(node_id, None)
        if entry is not None:
            entry.contact = contact
            entry.last_seen = now
            entry.failures = 0
            bucket.entries[node_id] = entry
            return None
        if len(bucket.entries) < self.k:
            bucket.replacements.pop(node_id, None)
            bucket.entries[node_id] = _Entry(contact, key, now)
            self._where[node_id] = index
            return None
        head = next(iter(bucket.entries.values()))
        if head.failures > 0:
            self._evict(bucket, head.contact.node_id, promote=False)
            bucket.replacements.pop(node_id, None)
            bucket.entries[node_id] = _Entry(contact, key, now)
            self._where[node_id] = index
            return None
        bucket.replacements.pop(node_id, None)
        bucket.replacements[node_id] = _Entry(contact, key, now)
        if len(bucket.replacements) > self.k:
            del bucket.replacements[next(iter(bucket.replacements))]
        if now - head.last_seen >= self.questionable_after:
            return head.contact
        return None

    def on_failure(self, node_id: bytes) -> None:
        """Record that a contact did not answer a request."""
        index = self._where.get(node_id)
        if index is None:
            return
        bucket = self._buckets[index]
        assert bucket is not None
        entry = bucket.entries[node_id]
        entry.failures += 1
        if bucket.replacements or entry.failures >= self.max_failures:
            self._evict(bucket, node_id)

    def _evict(self, bucket: _Bucket, node_id: bytes, *, promote: bool = True) -> None:
        del bucket.entries[node_id]
        del self._where[node_id]
        if promote and bucket.replacements:
            replacement_id, entry = bucket.replacements.popitem()
            entry.failures = 0
            bucket.entries[replacement_id] = entry
            self._where[replacement_id] = self._index(entry.key)

    def remove(self, node_id: bytes) -> None:
        index = self._where.get(node_id)
        if index is not None:
            bucket = self._buckets[index]
            assert bucket is not None
            self._evict(bucket, node_id)

    def get(self, node_id: bytes) -> Contact | None:
        index = self._where.get(node_id)
        if index is None:
            return None
        bucket = self._buckets[index]
        assert bucket is not None
        return bucket.entries[node_id].contact

    def contacts(self) -> list[Contact]:
        return [e.contact for b in self._buckets if b is not None for e in b.entries.values()]

    def replacement_contacts(self) -> list[Contact]:
        return [e.contact for b in self._buckets if b is not None for e in b.replacements.values()]

    def closest(self, target: bytes, count: int, exclude: bytes | None = None) -> list[Contact]:
        """The `count` contacts closest to `target`, closest first.

        Buckets fall in whole groups of strictly increasing distance from the
        target: the target's own bucket, then every closer-to-us bucket taken
        together, then each farther bucket in turn. Only as many groups as
        needed are gathered and sorted.
        """
        t = id_to_int(target)
        b = self._index(t)
        buckets = self._buckets
        picked: list[_Entry] = []
        if b >= 0 and buckets[b] is not None:
            picked.extend(buckets[b].entries.values())  # type: ignore[union-attr]
        want = count + (exclude is not None)
        if len(picked) < want:
            for i in range(b - 1, -1, -1):
                bucket = buckets[i]
                if bucket is not None:
                    picked.extend(bucket.entries.values())
            i = b + 1
            while len(picked) < want and i < ID_BITS:
                bucket = buckets[i]
                if bucket is not None:
                    picked.extend(bucket.entries.values())
                i += 1
        picked.sort(key=lambda e: e.key ^ t)
        if exclude is None:
            return [e.contact for e in picked[:count]]
        return [e.contact for e in picked if e.contact.node_id != exclude][:count]

    def stale_buckets(self, now: float, interval: float) -> list[int]:
        """Indexes of non-empty buckets nobody has touched for `interval` seconds."""
        return [
            i
            for i, b in enumerate(self._buckets)
            if b is not None and b.entries and now - b.last_touched >= interval
        ]

    def random_id_in_bucket(self, index: int, rng: random.Random | None = None) -> bytes:
        rng = rng or random
        low = 1 << index
        return int_to_id(self._own ^ (low | rng.getrandbits(index) if index else low))

    def estimate_network_size(self) -> int:
        """Roughly how many nodes there are, from how close our k nearest neighbours are."""
        nearest = self.closest(self.own_id, self.k)
        if len(nearest) < self.k:
            return len(nearest) + 1
        far = id_to_int(nearest[-1].node_id) ^ self._own
        return max(len(nearest) + 1, (self.k << ID_BITS) // max(far, 1))
