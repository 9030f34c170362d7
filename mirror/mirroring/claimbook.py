"""The claims this node won: which layers it fetches from the upstream for the cluster (pure).

Written when a claim is won (the local containerd is then told 404 and goes
upstream); read by the registry (a peer asking for such a layer waits briefly
for the ingest to appear) and by the announcer, which renews a claim while its
ingest grows and releases it on commit or abort. An entry not renewed lapses
with its lease, as the arbiter's does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Held:
    renewed: float
    expires: float


class ClaimBook:
    def __init__(self, lease: float = 5.0) -> None:
        self.lease = lease
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def won(self, key: str, now: float, expires: float | None = None) -> None:
        self._held[key] = _Held(now, now + self.lease if expires is None else expires)

    def holds(self, key: str, now: float) -> bool:
        held = self._held.get(key)
        if held is None:
            return False
        if held.expires <= now:
            del self._held[key]
            return False
        return True

    def renew_due(self, key: str, now: float) -> bool:
        """Held, and a third of the lease has passed since it was last won or renewed."""
        held = self._held.get(key)
        return held is not None and held.expires > now and now - held.renewed >= self.lease / 3

    def drop(self, key: str) -> bool:
        """Forget `key`; True when it was held (then release it at the arbiter)."""
        return self._held.pop(key, None) is not None

    def held(self, now: float) -> list[str]:
        """The keys held at `now` (lapsed ones are forgotten)."""
        return [key for key in list(self._held) if self.holds(key, now)]
