"""The routing table: k-buckets with a replacement cache and a stale-contact policy.

One bucket per distance bit length (a "full" Kademlia table, 128 buckets, made
on first use). Inside a bucket, contacts are kept least recently seen first.

Stale contacts (Kademlia paper, section 4.1): a contact that fails to answer is
replaced at once by the freshest contact of the replacement cache; with no
replacement at hand it stays, flagged, until it has failed `max_failures` times
in a row, so that a short outage does not flush the table.

A node id heard from a new address does not move there at once: the old
address is asked first (the caller pings it) and the move happens only if it
fails to answer, so one datagram, replayed or forged, cannot take a live
node's place.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

from .ids import ID_BITS, id_to_int, int_to_id
from .messages import BoundedCache, Contact

_MOVES_KEPT = 256  # node ids heard from a new address, waiting for the old one to fail


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
        self._nonempty: list[int] = []  # sorted indexes of buckets holding contacts
        self._nonempty_set: set[int] = set()
        self._where: dict[bytes, int] = {}  # node id -> bucket index, for contacts in buckets
        self._at: dict[tuple[str, int], bytes] = {}  # address -> node id, for contacts in buckets
        # node id -> the new address it spoke from, while its old one is being asked
        self._moves: BoundedCache[bytes, Contact] = BoundedCache(_MOVES_KEPT)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self._where

    def _index(self, key: int) -> int:
        return (self._own ^ key).bit_length() - 1

    def observe(self, contact: Contact, now: float) -> Contact | None:
        """Record that `contact` answered or sent us a request.

        Returns a contact the caller should ping, and report a failure for if
        it does not answer: the least recently seen contact of a full bucket
        when the new contact had to wait in the replacement cache and that one
        has not been heard from for a while; or the known address of a node
        that now speaks from another one (it moves if the old one fails).
        """
        node_id = contact.node_id
        if node_id == self.own_id:
            return None
        address = (contact.host, contact.port)
        previous = self._at.get(address)
        if previous is not None and previous != node_id:
            # The address now answers with another id (a restart, or a liar):
            # one address never holds more than one place in the table.
            self.remove(previous)
        key = id_to_int(node_id)
        index = self._index(key)
        bucket = self._buckets[index]
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        bucket.last_touched = now
        entry = bucket.entries.get(node_id)
        if entry is not None:
            return self._seen_again(bucket, entry, contact, now)
        if len(bucket.entries) < self.k:
            self._insert(bucket, index, _Entry(contact, key, now))
            return None
        head = next(iter(bucket.entries.values()))
        if head.failures > 0:
            self._evict(bucket, head.contact.node_id, promote=False)
            self._insert(bucket, index, _Entry(contact, key, now))
            return None
        bucket.replacements.pop(node_id, None)
        bucket.replacements[node_id] = _Entry(contact, key, now)
        if len(bucket.replacements) > self.k:
            del bucket.replacements[next(iter(bucket.replacements))]
        if now - head.last_seen >= self.questionable_after:
            return head.contact
        return None

    def _seen_again(
        self, bucket: _Bucket, entry: _Entry, contact: Contact, now: float
    ) -> Contact | None:
        node_id = contact.node_id
        if entry.contact != contact and entry.failures == 0:
            self._moves.put(node_id, contact)  # moves if the old address fails to answer
            return entry.contact
        self._moves.pop(node_id, None)
        if entry.contact != contact:  # the old address had failed already: move now
            self._at.pop((entry.contact.host, entry.contact.port), None)
            self._at[(contact.host, contact.port)] = node_id
        entry.contact = contact
        entry.last_seen = now
        entry.failures = 0
        del bucket.entries[node_id]
        bucket.entries[node_id] = entry  # most recently seen last
        return None

    def on_failure(self, node_id: bytes, address: tuple[str, int] | None = None) -> None:
        """Record that a contact (at `address`, if given) did not answer a request."""
        index = self._where.get(node_id)
        if index is None:
            return
        bucket = self._buckets[index]
        assert bucket is not None
        entry = bucket.entries[node_id]
        moved = self._moves.get(node_id)
        if address is not None and address != (entry.contact.host, entry.contact.port):
            if moved is not None and address == (moved.host, moved.port):
                del self._moves[node_id]
            return  # not where the table has it: says nothing about that address
        if moved is not None:  # its old address is silent: it lives at the new one
            del self._moves[node_id]
            self._at.pop((entry.contact.host, entry.contact.port), None)
            stale = self._at.get((moved.host, moved.port))
            if stale is not None and stale != node_id:
                self.remove(stale)
            self._at[(moved.host, moved.port)] = node_id
            entry.contact = moved
            entry.failures = 0
            return
        entry.failures += 1
        if bucket.replacements or entry.failures >= self.max_failures:
            self._evict(bucket, node_id)

    def _insert(self, bucket: _Bucket, index: int, entry: _Entry) -> None:
        node_id = entry.contact.node_id
        bucket.replacements.pop(node_id, None)
        bucket.entries[node_id] = entry
        self._where[node_id] = index
        if index not in self._nonempty_set:
            self._nonempty_set.add(index)
            bisect.insort(self._nonempty, index)
        address = (entry.contact.host, entry.contact.port)
        stale = self._at.get(address)
        if stale is not None and stale != node_id:
            self.remove(stale)
        self._at[address] = node_id

    def _evict(self, bucket: _Bucket, node_id: bytes, *, promote: bool = True) -> None:
        entry = bucket.entries.pop(node_id)
        del self._where[node_id]
        self._moves.pop(node_id, None)
        address = (entry.contact.host, entry.contact.port)
        if self._at.get(address) == node_id:
            del self._at[address]
        if promote and bucket.replacements:
            _, replacement = bucket.replacements.popitem()
            replacement.failures = 0
            self._insert(bucket, self._index(replacement.key), replacement)
        if not bucket.entries:
            index = self._index(entry.key)
            self._nonempty_set.discard(index)
            self._nonempty.remove(index)

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

    def _bucket_order(self, d: int, b: int) -> list[int]:
        """Non-empty bucket indexes in order of increasing distance from a target
        whose distance from us is `d` (bit length b + 1).

        Every contact of a bucket is nearer the target than every contact of the
        next one: first bucket b; then the buckets j < b where bit j of d is
        set, from high j down; then those j < b where it is clear, from low j
        up; then the buckets beyond b, nearest first.
        """
        near: list[int] = []
        low: list[int] = []
        far: list[int] = []
        for j in self._nonempty:
            if j < b:
                (near if (d >> j) & 1 else low).append(j)
            elif j > b:
                far.append(j)
        near.reverse()
        head = [b] if b >= 0 and b in self._nonempty_set else []
        return head + near + low + far

    def closest(self, target: bytes, count: int, exclude: bytes | None = None) -> list[Contact]:
        """The `count` contacts closest to `target`, closest first.

        Whole buckets are taken in order of distance until there are enough;
        only those are sorted."""
        t = id_to_int(target)
        d = t ^ self._own
        want = count + (exclude is not None and exclude in self._where)
        buckets = self._buckets
        picked: list[_Entry] = []
        for j in self._bucket_order(d, d.bit_length() - 1):
            picked.extend(buckets[j].entries.values())  # type: ignore[union-attr]
            if len(picked) >= want:
                break
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

    def random_id_in_bucket(self, index: int, rng: random.Random) -> bytes:
        low = 1 << index
        return int_to_id(self._own ^ (low | rng.getrandbits(index) if index else low))

    def estimate_network_size(self) -> int:
        """Roughly how many nodes there are, from how close our k nearest neighbours are."""
        nearest = self.closest(self.own_id, self.k)
        if len(nearest) < self.k:
            return len(nearest) + 1
        far = id_to_int(nearest[-1].node_id) ^ self._own
        return max(len(nearest) + 1, (self.k << ID_BITS) // max(far, 1))
