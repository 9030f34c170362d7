"""The announce planner: which nodes get which keys, in which datagrams. Pure.

Keys are sorted along the keyspace and grouped by a prefix long enough that a
group's region holds about k nodes (from an estimate of the network size);
one FIND_NODE lookup per group finds every node of the region and its
surroundings, and each key goes to the k closest of those. Each node then gets
its keys in as few ADD_PROVIDER datagrams as fit.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from .ids import ID_BITS, id_to_int, int_to_id
from .messages import MAX_KEYS_PER_ADD, AddProvider, Contact


@dataclass(frozen=True, slots=True)
class Group:
    target: bytes  # the id looked up for this group
    keys: tuple[bytes, ...]  # key ids, sorted


def group_keys(key_ids: Iterable[bytes], network_size: int, k: int) -> list[Group]:
    ids = sorted(set(key_ids))
    bits = max(0, math.ceil(math.log2(max(network_size / k, 1))))
    groups: dict[int, list[bytes]] = {}
    for kid in ids:
        groups.setdefault(id_to_int(kid) >> (ID_BITS - bits) if bits else 0, []).append(kid)
    out = []
    for group in groups.values():
        if len(group) == 1:
            target = group[0]
        else:
            target = int_to_id((id_to_int(group[0]) + id_to_int(group[-1])) // 2)
        out.append(Group(target, tuple(group)))
    return out


@dataclass
class Plan:
    """Node id -> (contact, key ids it is to store), in the order nodes were first given a key."""

    entries: dict[bytes, tuple[Contact, list[bytes]]] = field(default_factory=dict)

    def assign(self, group: Group, known: Iterable[Contact], k: int) -> None:
        """Give each key of `group` to the k closest of the `known` contacts."""
        pool = [(id_to_int(c.node_id), c) for c in known]
        for kid in group.keys:
            t = id_to_int(kid)
            for _, contact in heapq.nsmallest(k, pool, key=lambda item: item[0] ^ t):
                entry = self.entries.get(contact.node_id)
                if entry is None:
                    self.entries[contact.node_id] = (contact, [kid])
                else:
                    entry[1].append(kid)

    def messages(self, origin: tuple[str, int, int]) -> list[tuple[Contact, AddProvider]]:
        """The ADD_PROVIDER datagrams naming this node at `origin` (host, UDP and
        registry ports)."""
        out = []
        for contact, kids in self.entries.values():
            for start in range(0, len(kids), MAX_KEYS_PER_ADD):
                chunk = tuple(kids[start : start + MAX_KEYS_PER_ADD])
                out.append((contact, AddProvider(*origin, chunk)))
        return out
