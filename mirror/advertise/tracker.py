"""Keep the DHT in step with containerd: provide what this node holds, withdraw what it lost.

At start, and after every reconnect, a full resync (subscribe first, then list,
so no event falls between the two); in between, image events update one image
at a time. A key is withdrawn only when no image left on the node needs it.

containerd >= 2.0 also publishes `/content/create`: a committed blob is
provided at once, as a "loose" key, before any image names it; the image's
walk takes it over when the image record appears.

containerd's garbage collector deletes content without a `/content/delete`
event (`discard_unpacked_layers = true` drops layers right after unpacking),
so advertised state is reconciled three ways besides events: an image touched
by an event is walked again `settle` seconds later; the hot path reports a
local miss for an advertised key (`local_miss`), which is checked and
withdrawn at once; and every advertised digest is stat-ed once per
`audit_period`, in slices spread over the period, in a worker thread.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Protocol

import trio

from mirror.advertise.walk import image_keys, missing_digests
from mirror.containerd.client import (
    ContainerdClient,
    ContainerdError,
    ContainerdUnavailable,
    ContentEvent,
    ImageEvent,
    event_filters,
)
from mirror.oci.filters import ReferenceFilter

log = logging.getLogger("mirror.advertise")


class KeyPublisher(Protocol):
    async def provide(self, keys: Iterable[str]) -> None: ...

    async def withdraw(self, keys: Iterable[str]) -> None: ...


class Advertiser:
    def __init__(
        self,
        client: ContainerdClient,
        publisher: KeyPublisher,
        content_root: Path,
        reference_filter: ReferenceFilter,
        *,
        namespace: str,
        on_image_change: Callable[[str], None] | None = None,
        on_content_gone: Callable[[str], None] | None = None,
        max_backoff: float = 5.0,
        settle: float = 2.0,
        audit_period: float = 60.0,
        audit_batch: int = 512,
    ) -> None:
        self._client = client
        self._publisher = publisher
        self._content_root = content_root
        self._filter = reference_filter
        self._namespace = namespace
        self._on_image_change = on_image_change
        # Told of every digest found gone (event or reconcile): cached answers for it end.
        self._on_content_gone = on_content_gone
        self._max_backoff = max_backoff
        self._settle = settle
        self._audit_period = audit_period
        self._audit_batch = max(1, audit_batch)
        self.images: dict[str, frozenset[str]] = {}
        # Digests provided on /content/create that no image names yet.
        self.loose: set[str] = set()
        self._refs: Counter[str] = Counter()
        self.connected = False
        # Keys found stale (withdrawn by reconciliation, not by an event).
        self.stale_withdrawn = 0
        self._lock = trio.Lock()
        self._suspects: set[str] = set()
        self._recheck: dict[str, float] = {}
        self._loose_recheck: dict[str, float] = {}
        self._wake = trio.Event()

    def counts(self) -> dict[str, int]:
        tags = sum(1 for k in self._refs if not k.startswith("sha"))
        return {
            "images": len(self.images),
            "keys": len(self._refs),
            "tags": tags,
            "digests": len(self._refs) - tags,
        }

    def advertised(self) -> frozenset[str]:
        """Every key this node provides right now."""
        return frozenset(self._refs)

    def local_miss(self, key: str) -> None:
        """The hot path found nothing on this node for `key` (a digest or a tag key).

        When the key is advertised, it is checked and, if stale, withdrawn at
        once by the reconcile task. O(1) and never blocks: safe on the hot path.
        """
        if key in self._refs:
            self._suspects.add(key)
            self._wake.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reconcile)
            nursery.start_soon(self._audit)
            await self._follow()

    async def _follow(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with self._client.subscribe(event_filters(self._namespace)) as events:
                    await self.resync()
                    self.connected = True
                    backoff = 0.2
                    async for event in events:
                        await self._handle(event)
                raise ContainerdUnavailable("event stream ended")
            except ContainerdUnavailable as exc:
                if self.connected:
                    log.warning("lost containerd; will resync", extra={"error": str(exc)})
                self.connected = False
            except ContainerdError as exc:
                log.warning("containerd refused a call; will resync", extra={"error": str(exc)})
                self.connected = False
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def resync(self) -> None:
        images = await self._client.list_images()
        wanted = {image.name: image.target.digest for image in images}
        content_root, reference_filter = self._content_root, self._filter
        loose = sorted(self.loose)

        def walk_all() -> tuple[dict[str, frozenset[str]], list[str]]:
            fresh = {
                name: image_keys(content_root, name, digest, reference_filter)
                for name, digest in wanted.items()
            }
            return fresh, missing_digests(content_root, loose)

        fresh, lost = await trio.to_thread.run_sync(walk_all)
        async with self._lock:
            for name in list(self.images):
                if name not in fresh:
                    await self._set(name, frozenset())
            for name, keys in fresh.items():
                await self._set(name, keys)
            await self._drop_loose(lost)
        counts = self.counts()
        log.info("advertised state synced with containerd", extra=counts)

    async def _handle(self, event: ImageEvent | ContentEvent) -> None:
        if isinstance(event, ImageEvent):
            if self._on_image_change is not None:
                self._on_image_change(event.name)
            async with self._lock:
                await self._refresh(event.name, kind=event.kind)
            if event.kind != "delete":
                # GC may drop what the walk just found (discard_unpacked_layers), silently.
                self._recheck[event.name] = trio.current_time() + self._settle
                self._wake.set()
        elif event.kind == "create":
            await self._content_created(event.digest)
        elif event.kind == "delete":
            async with self._lock:
                await self._content_gone([event.digest])

    async def _refresh(self, name: str, *, kind: str = "update") -> None:
        """Walk one image again (its record read from containerd) and apply the difference."""
        if kind == "delete":
            await self._set(name, frozenset())
            return
        image = await self._client.get_image(name)
        if image is None:
            await self._set(name, frozenset())
            return
        await self._set(image.name, await self._keys(image.name, image.target.digest))

    async def content_committed(self, digest: str) -> None:
        """A download finished into the store (seen in `ingest/`): advertise it now,
        before any image names it (containerd 1.x publishes no `/content/create`)."""
        await self._content_created(digest)

    async def _content_created(self, digest: str) -> None:
        # A committed blob carries no registry: with registry filters it waits for
        # the image walk, which applies them.
        if digest in self._refs or self._filter.mirrored or self._filter.patterns:
            return
        lost = await trio.to_thread.run_sync(missing_digests, self._content_root, [digest])
        async with self._lock:
            if lost or digest in self._refs:
                return
            self.loose.add(digest)
            await self._apply([digest], [])
        # GC may drop it at once (discard_unpacked_layers), silently: check it again
        # after the settle time, as an image's walk is.
        self._loose_recheck[digest] = trio.current_time() + self._settle
        self._wake.set()

    async def _content_gone(self, digests: Collection[str]) -> None:
        """Re-walk every image that advertised one of `digests`; drop them as loose keys."""
        if self._on_content_gone is not None:
            for digest in digests:
                self._on_content_gone(digest)
        await self._drop_loose(digests)
        gone = set(digests)
        for name, keys in list(self.images.items()):
            if not gone.isdisjoint(keys):
                await self._refresh(name)

    async def _drop_loose(self, digests: Iterable[str]) -> None:
        dropped = [d for d in digests if d in self.loose]
        self.loose.difference_update(dropped)
        if dropped:
            await self._apply([], dropped)

    async def _reconcile(self) -> None:
        """Check what the hot path reported missing, and re-walk images whose settle time came."""
        while True:
            due = min(
                min(self._recheck.values(), default=math.inf),
                min(self._loose_recheck.values(), default=math.inf),
            )
            with trio.move_on_at(due):
                await self._wake.wait()
            self._wake = trio.Event()
            suspects, self._suspects = self._suspects, set()
            now = trio.current_time()
            names = [name for name, when in self._recheck.items() if when <= now]
            for name in names:
                del self._recheck[name]
            for digest in [d for d, when in self._loose_recheck.items() if when <= now]:
                del self._loose_recheck[digest]
                if digest in self.loose:
                    suspects.add(digest)
            try:
                if suspects:
                    await self._check(suspects)
                for name in names:
                    async with self._lock:
                        await self._refresh(name)
            except ContainerdError as exc:
                # The event loop resyncs when containerd is back.
                log.debug("reconcile deferred", extra={"error": str(exc)})

    async def _check(self, keys: Collection[str]) -> None:
        """Withdraw the digests among `keys` that are gone; re-walk the images of tag keys."""
        digests = [k for k in keys if "/" not in k]
        lost = await trio.to_thread.run_sync(missing_digests, self._content_root, digests)
        tags = {k for k in keys if "/" in k}
        async with self._lock:
            before = len(self._refs)
            if lost:
                await self._content_gone(lost)
            for name, image_keys_ in list(self.images.items()):
                if not tags.isdisjoint(image_keys_):
                    await self._refresh(name)
            self._count_stale(before, "a local miss")

    async def _audit(self) -> None:
        """Stat every advertised digest once per audit period, a slice at a time."""
        while True:
            digests = sorted(k for k in self._refs if "/" not in k)
            if not digests:
                await trio.sleep(self._audit_period)
                continue
            for start in range(0, len(digests), self._audit_batch):
                chunk = digests[start : start + self._audit_batch]
                lost = await trio.to_thread.run_sync(missing_digests, self._content_root, chunk)
                if lost:
                    try:
                        async with self._lock:
                            before = len(self._refs)
                            await self._content_gone(lost)
                            self._count_stale(before, "the audit")
                    except ContainerdError as exc:
                        log.debug("audit deferred", extra={"error": str(exc)})
                await trio.sleep(self._audit_period * len(chunk) / len(digests))

    def _count_stale(self, before: int, how: str) -> None:
        withdrawn = max(0, before - len(self._refs))
        if withdrawn:
            self.stale_withdrawn += withdrawn
            log.info("withdrew stale advertisements", extra={"keys": withdrawn, "found_by": how})

    async def _keys(self, name: str, digest: str) -> frozenset[str]:
        """The walk reads manifests from disk: in a worker thread, off the event loop."""
        return await trio.to_thread.run_sync(
            image_keys, self._content_root, name, digest, self._filter
        )

    async def _set(self, name: str, keys: frozenset[str]) -> None:
        old = self.images.get(name, frozenset())
        if keys == old:
            return
        if keys:
            self.images[name] = keys
        else:
            self.images.pop(name, None)
        # A loose key named by an image from now on is the image's to withdraw.
        claimed = [key for key in keys if key in self.loose]
        self.loose.difference_update(claimed)
        await self._apply(keys - old, [*(old - keys), *claimed])
        log.debug("image keys changed", extra={"image": name, "keys": len(keys)})

    async def _apply(self, added: Iterable[str], removed: Iterable[str]) -> None:
        """Count references up for `added`, down for `removed`; publish what crossed zero."""
        added, removed = list(added), list(removed)
        touched = set(added) | set(removed)
        before = {key: self._refs[key] for key in touched}
        for key in added:
            self._refs[key] += 1
        for key in removed:
            self._refs[key] -= 1
        gone = [key for key in touched if before[key] > 0 and self._refs[key] <= 0]
        new = [key for key in touched if before[key] <= 0 and self._refs[key] > 0]
        for key in touched:
            if self._refs[key] <= 0:
                del self._refs[key]
        if gone:
            await self._publisher.withdraw(gone)
        if new:
            await self._publisher.provide(new)
        if gone or new:
            log.debug(
                "advertised keys changed", extra={"provided": len(new), "withdrawn": len(gone)}
            )
