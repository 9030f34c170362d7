"""Sources that served wrong bytes for a digest, not asked for it again (pure).

A peer whose answer did not hash to the digest asked for (a poisoned DHT record,
a content store altered on disk) is dropped for that digest for `ttl`; it may
still serve other digests. Bounded: the oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict

Where = tuple[str, int]  # a source's host and registry port


class SourceDistrust:
    def __init__(self, ttl: float = 3600.0, capacity: int = 4096) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._until: OrderedDict[tuple[str, Where], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def distrust(self, digest: str, where: Where, now: float) -> None:
        entry = (digest, where)
        self._until.pop(entry, None)
        self._until[entry] = now + self.ttl
        while len(self._until) > self.capacity:
            self._until.popitem(last=False)

    def distrusted(self, digest: str, where: Where, now: float) -> bool:
        until = self._until.get((digest, where))
        if until is None:
            return False
        if until <= now:
            del self._until[(digest, where)]
            return False
        return True
