"""A blob nobody in the cluster holds yet: claim it, or stream it from whoever did (pure).

When the race found no peer for a blob GET, this core decides what comes next.
The shell (`coldstart.py`) feeds it what happened, with the time, and asks
`next_step(now)`:

- `ClaimIt`: claim the digest at its arbiter (the DHT's put-if-absent lease).
- `Search(holder)`: race the providers again, fresh from the DHT, with the
  claim's holder (if any) among them: it is fetching from the upstream, so its
  ingest is the root of the cluster's copy.
- `Pause(until)`: wait, then ask again.
- `GiveUp(why, won)`: answer the fast 404, so containerd goes to the next host
  (the upstream). `won`: this node holds the claim and fetches for the cluster.

The rules. First a claim (unless the race before found only busy sources:
then a pause and a search, since the blob is held). Won, the local containerd
fetches upstream; refused (no arbiter, table full), the same, since a pull
must never break; lost, search with the holder. A search where some source
answered busy pauses and searches again (sources exist; asking the upstream
would fetch the layer once more). A search that failed otherwise pauses,
backing off, and claims again: the holder may be gone and its lease lapsed,
and then this node takes over. Everything is bounded by `wait_budget` since
the last busy answer (sources that are busy are alive and streaming: waiting
for them beats fetching once more), and by `busy_budget` in all: past either
the answer is the 404 and containerd fetches the layer itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dht import Provider
from dht.claims import ClaimAnswer, Lost, Won


@dataclass(frozen=True, slots=True)
class ColdMissLimits:
    wait_budget: float = 15.0
    busy_budget: float = 120.0
    first_pause: float = 0.05
    max_pause: float = 1.0
    # How long a search waits for the DHT to name a source (the first race's is
    # --mirror-resolve-timeout, 20 ms: tuned for a fast miss, too short here).
    search_resolve_timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class ClaimIt:
    pass


@dataclass(frozen=True, slots=True)
class Search:
    holder: Provider | None


@dataclass(frozen=True, slots=True)
class Pause:
    until: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: Literal["won", "refused", "timeout"]

    @property
    def won(self) -> bool:
        return self.reason == "won"


ColdStep = ClaimIt | Search | Pause | GiveUp


class ColdMiss:
    def __init__(
        self, now: float, limits: ColdMissLimits | None = None, *, busy: bool = False
    ) -> None:
        """`busy`: the race before this found sources, all at their stream cap; then
        this starts with a pause and a search (someone holds the blob: no claim)."""
        self.limits = limits or ColdMissLimits()
        self.started = now
        self.deadline = now + self.limits.wait_budget
        self.holder: Provider | None = None
        self.claims = 0
        self.searches = 0
        self._next: ColdStep = ClaimIt()
        self._after_pause: ColdStep = ClaimIt()
        self._pause = self.limits.first_pause
        if busy:
            self.search_failed(now, busy=True)
            self.searches = 0

    def next_step(self, now: float) -> ColdStep:
        step = self._next
        if isinstance(step, GiveUp):
            return step
        if now >= self.deadline:
            self._next = GiveUp("timeout")
            return self._next
        if isinstance(step, Pause):
            if now < step.until:
                return step
            self._next = step = self._after_pause
        return step

    def claimed(self, answer: ClaimAnswer, now: float) -> None:
        if isinstance(self._next, GiveUp):
            return  # decided: later events change nothing
        self.claims += 1
        if isinstance(answer, Won):
            self._next = GiveUp("won")
        elif isinstance(answer, Lost):
            self.holder = answer.claim.holder
            self._next = Search(self.holder)
        else:
            self._next = GiveUp("refused")

    def search_failed(self, now: float, *, busy: bool) -> None:
        """No source gave a usable head; `busy`: one at least answered it was at its cap."""
        if isinstance(self._next, GiveUp):
            return
        self.searches += 1
        if busy:
            limits = self.limits
            self.deadline = max(
                self.deadline,
                min(
                    now + limits.wait_budget,
                    self.started + max(limits.busy_budget, limits.wait_budget),
                ),
            )
        self._after_pause = Search(self.holder) if busy else ClaimIt()
        self._next = Pause(min(now + self._pause, self.deadline))
        self._pause = min(self._pause * 2, self.limits.max_pause)


def usable_source(provider: Provider, offset: int, holder: Provider | None) -> bool:
    """Whether a provider can serve from byte `offset` now.

    Complete holders can. An in-flight one only when its announced progress is
    past `offset` (announced progress only grows, so it has those bytes), or
    when it is the claim's holder, whose download comes from the upstream: a
    source still waiting for bytes itself could otherwise be chosen by its own
    source, and the two would wait on each other.
    """
    if provider.progress is None:
        return True
    if holder is not None and provider.node_id == holder.node_id:
        return True
    return provider.progress[0] > offset
