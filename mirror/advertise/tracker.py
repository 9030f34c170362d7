"""Keep the DHT in step with containerd: provide what this node holds, withdraw what it lost.

At start, and after every reconnect, a full resync (subscribe first, then list,
so no event falls between the two); in between, image events update one image
at a time. A key is withdrawn only when no image left on the node needs it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import trio

from mirror.advertise.walk import image_keys
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
        max_backoff: float = 5.0,
    ) -> None:
        self._client = client
        self._publisher = publisher
        self._content_root = content_root
        self._filter = reference_filter
        self._namespace = namespace
        self._on_image_change = on_image_change
        self._max_backoff = max_backoff
        self.images: dict[str, frozenset[str]] = {}
        self._refs: Counter[str] = Counter()
        self.connected = False

    def counts(self) -> dict[str, int]:
        tags = sum(1 for k in self._refs if not k.startswith("sha"))
        return {
            "images": len(self.images),
            "keys": len(self._refs),
            "tags": tags,
            "digests": len(self._refs) - tags,
        }

    async def run(self) -> None:
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

        def walk_all() -> dict[str, frozenset[str]]:
            return {
                name: image_keys(content_root, name, digest, reference_filter)
                for name, digest in wanted.items()
            }

        fresh = await trio.to_thread.run_sync(walk_all)
        for name in list(self.images):
            if name not in fresh:
                await self._set(name, frozenset())
        for name, keys in fresh.items():
            await self._set(name, keys)
        counts = self.counts()
        log.info("advertised state synced with containerd", extra=counts)

    async def _handle(self, event: ImageEvent | ContentEvent) -> None:
        if isinstance(event, ImageEvent):
            if self._on_image_change is not None:
                self._on_image_change(event.name)
            if event.kind == "delete":
                await self._set(event.name, frozenset())
                return
            image = await self._client.get_image(event.name)
            if image is None:
                await self._set(event.name, frozenset())
                return
            await self._set(image.name, await self._keys(image.name, image.target.digest))
        elif event.kind == "delete" and event.digest in self._refs:
            for name, keys in list(self.images.items()):
                if event.digest in keys:
                    image = await self._client.get_image(name)
                    fresh = (
                        await self._keys(name, image.target.digest)
                        if image is not None
                        else frozenset()
                    )
                    await self._set(name, fresh)

    async def _keys(self, name: str, digest: str) -> frozenset[str]:
        """The walk reads manifests from disk: in a worker thread, off the event loop."""
        return await trio.to_thread.run_sync(
            image_keys, self._content_root, name, digest, self._filter
        )

    async def _set(self, name: str, keys: frozenset[str]) -> None:
        old = self.images.get(name, frozenset())
        if keys == old:
            return
        added, removed = keys - old, old - keys
        if keys:
            self.images[name] = keys
        else:
            self.images.pop(name, None)
        for key in removed:
            self._refs[key] -= 1
        gone = [key for key in removed if self._refs[key] <= 0]
        for key in gone:
            del self._refs[key]
        new = [key for key in added if self._refs[key] == 0]
        for key in added:
            self._refs[key] += 1
        if gone:
            await self._publisher.withdraw(gone)
        if new:
            await self._publisher.provide(new)
        if gone or new:
            log.debug(
                "advertised keys changed",
                extra={"image": name, "provided": len(new), "withdrawn": len(gone)},
            )
