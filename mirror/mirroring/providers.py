"""Which peers hold a key: DHT lookups, cached briefly and shared between requests.

A containerd pull asks for the same digest from several places at once (HEAD
then GET, several layers in parallel, several pods): one DHT lookup per key at a
time serves them all (single flight), and its answer is kept for a few seconds.
Lookups run in the cache's own nursery, so a request that gives up early does
not cut the lookup short for the others.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from dht import Provider

log = logging.getLogger("mirror.mirroring")


class ProviderSource(Protocol):
    def get_providers(self, key: str, limit: int = 20) -> AsyncIterator[Provider]: ...


@dataclass(eq=False)
class _Lookup:
    providers: list[Provider] = field(default_factory=list)
    done: bool = False
    expires: float = float("inf")
    changed: trio.Event = field(default_factory=trio.Event)
    where: set[tuple[str, int]] = field(default_factory=set)

    def add(self, provider: Provider) -> None:
        where = (provider.host, provider.registry_port)
        if where in self.where:
            return
        self.where.add(where)
        self.providers.append(provider)
        self._wake()

    def finish(self, now: float, ttl: float, negative_ttl: float) -> None:
        self.done = True
        self.expires = now + (ttl if self.providers else negative_ttl)
        self._wake()

    def _wake(self) -> None:
        changed, self.changed = self.changed, trio.Event()
        changed.set()


class ProviderCache:
    def __init__(
        self,
        source: ProviderSource,
        *,
        is_self: Callable[[Provider], bool],
        ttl: float = 5.0,
        negative_ttl: float = 0.5,
        lookup_timeout: float = 3.0,
        limit: int = 20,
    ) -> None:
        self._source = source
        self._is_self = is_self
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._lookup_timeout = lookup_timeout
        self._limit = limit
        self._lookups: dict[str, _Lookup] = {}
        self._nursery: trio.Nursery | None = None
        self.hints = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _lookup_for(self, key: str) -> _Lookup:
        now = trio.current_time()
        lookup = self._lookups.get(key)
        if lookup is not None and (not lookup.done or lookup.expires > now):
            return lookup
        if len(self._lookups) > 4096:
            self._lookups = {
                k: v for k, v in self._lookups.items() if not v.done or v.expires > now
            }
        lookup = _Lookup()
        self._lookups[key] = lookup
        if self._nursery is None:  # Not started yet (or stopping): nobody to ask.
            lookup.finish(now, 0.0, 0.0)
            return lookup
        self._nursery.start_soon(self._run_lookup, key, lookup)
        return lookup

    def forget(self, key: str) -> None:
        """Drop a finished lookup of `key`, so the next asks the DHT again (a lookup
        still running is fresh enough and is kept)."""
        lookup = self._lookups.get(key)
        if lookup is not None and lookup.done:
            del self._lookups[key]

    def hint(self, key: str, provider: Provider) -> None:
        """A provider known without the DHT (the peer that served the manifest naming `key`).

        The DHT lookup still runs, so more providers follow for hedging and resuming.
        """
        if self._is_self(provider):
            return
        lookup = self._lookup_for(key)
        lookup.add(provider)
        if lookup.done:
            lookup.expires = max(lookup.expires, trio.current_time() + self._ttl)
        self.hints += 1

    async def _run_lookup(self, key: str, lookup: _Lookup) -> None:
        try:
            with trio.move_on_after(self._lookup_timeout):
                async with contextlib.aclosing(
                    self._source.get_providers(key, self._limit)
                ) as found:  # type: ignore[type-var]
                    async for provider in found:
                        if not self._is_self(provider):
                            lookup.add(provider)
        except Exception:
            log.exception("provider lookup failed", extra={"key": key})
        finally:
            lookup.finish(trio.current_time(), self._ttl, self._negative_ttl)

    async def providers(self, key: str) -> AsyncIterator[Provider]:
        """Providers of `key` as they become known; ends when the lookup is done."""
        lookup = self._lookup_for(key)
        index = 0
        while True:
            if index < len(lookup.providers):
                yield lookup.providers[index]
                index += 1
            elif lookup.done:
                return
            else:
                await lookup.changed.wait()
