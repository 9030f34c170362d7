"""Claims: who fetches a key from outside the cluster (pure; the caller passes `now`).

A node about to fetch a layer nobody holds asks the nodes closest to the
layer's key to record its claim: put-if-absent with a short lease. The first
claim wins and every later claimant is told who holds it, so one node fetches
and the others stream from it. The holder renews while its download grows and
releases on commit or abort; a claim that is neither renewed nor released
lapses with its lease, so a claimant that died costs at most one lease.

Bounded: at most `max_claims` live claims, and `max_per_claimant` per
claimant address, so one noisy or hostile peer cannot fill the table.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from .messages import MAX_LEASE, Provider

__all__ = [
    "DEFAULT_LEASE",
    "MAX_LEASE",
    "Claim",
    "ClaimAnswer",
    "ClaimTable",
    "Lost",
    "Refused",
    "Won",
]

DEFAULT_LEASE = 5.0


@dataclass(frozen=True, slots=True)
class Claim:
    key: bytes
    holder: Provider
    expires: float


@dataclass(frozen=True, slots=True)
class Won:
    """The claimant holds the claim until `claim.expires` (new, renewed or re-taken)."""

    claim: Claim


@dataclass(frozen=True, slots=True)
class Lost:
    """Someone else holds the claim: stream from them."""

    claim: Claim


@dataclass(frozen=True, slots=True)
class Refused:
    """The table is full, or this claimant holds too many claims."""

    reason: str


ClaimAnswer = Won | Lost | Refused


def _same_claimant(a: Provider, b: Provider) -> bool:
    return (a.node_id, a.host, a.registry_port) == (b.node_id, b.host, b.registry_port)


class ClaimTable:
    def __init__(
        self,
        *,
        max_claims: int = 65_536,
        max_per_claimant: int = 1024,
        max_lease: float = MAX_LEASE,
    ) -> None:
        self.max_claims = max_claims
        self.max_per_claimant = max_per_claimant
        self.max_lease = max_lease
        self._claims: dict[bytes, Claim] = {}
        self._per_claimant: dict[str, int] = {}
        self._expiries: list[tuple[float, bytes]] = []  # (expires, key), lazily pruned

    def __len__(self) -> int:
        return len(self._claims)

    def get(self, key: bytes, now: float) -> Claim | None:
        claim = self._claims.get(key)
        if claim is None:
            return None
        if claim.expires <= now:
            self._drop(key)
            return None
        return claim

    def claim(self, key: bytes, claimant: Provider, now: float, lease: float) -> ClaimAnswer:
        """Put-if-absent; the holder claiming again renews its lease."""
        lease = min(max(lease, 0.0), self.max_lease)
        held = self.get(key, now)
        if held is not None and not _same_claimant(held.holder, claimant):
            return Lost(held)
        if held is None:
            if len(self._claims) >= self.max_claims:
                self.expire(now)
                if len(self._claims) >= self.max_claims:
                    return Refused("claim table full")
            if self._per_claimant.get(claimant.host, 0) >= self.max_per_claimant:
                return Refused(f"too many claims from {claimant.host}")
            self._per_claimant[claimant.host] = self._per_claimant.get(claimant.host, 0) + 1
        claim = Claim(key, claimant, now + lease)
        self._claims[key] = claim
        self._push(claim)
        return Won(claim)

    def _push(self, claim: Claim) -> None:
        expiries = self._expiries
        if len(expiries) > 2 * len(self._claims) + 64:  # renewals left stale entries behind
            expiries[:] = [(c.expires, c.key) for c in self._claims.values()]
            heapq.heapify(expiries)
        else:
            heapq.heappush(expiries, (claim.expires, claim.key))

    def next_expiry(self) -> float:
        """When the earliest live claim lapses (inf with none): the core's timer."""
        expiries = self._expiries
        while expiries:
            when, key = expiries[0]
            claim = self._claims.get(key)
            if claim is not None and claim.expires == when:
                return when
            heapq.heappop(expiries)
        return math.inf

    def release(self, key: bytes, claimant: Provider, now: float) -> bool:
        """Only the holder can release; True if it did."""
        held = self.get(key, now)
        if held is None or not _same_claimant(held.holder, claimant):
            return False
        self._drop(key)
        return True

    def expire(self, now: float) -> int:
        """Drop the claims lapsed by `now`; how many."""
        dropped = 0
        while self.next_expiry() <= now:
            _, key = heapq.heappop(self._expiries)
            self._drop(key)
            dropped += 1
        return dropped

    def _drop(self, key: bytes) -> None:
        claim = self._claims.pop(key)
        host = claim.holder.host
        left = self._per_claimant.get(host, 0) - 1
        if left > 0:
            self._per_claimant[host] = left
        else:
            self._per_claimant.pop(host, None)
