"""The node's own content, read straight out of containerd's content store.

Blobs are opened by path (a committed blob is renamed into place atomically, so
an open file is complete); tags go through containerd's image store, with a short
cache because every pull resolves the tag first.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import trio

from mirror.containerd.paths import blob_path
from mirror.oci.digest import Digest, parse_digest
from mirror.oci.mediatypes import MAX_MANIFEST_SIZE, detect_manifest_type

log = logging.getLogger("mirror.server")


@dataclass(frozen=True, slots=True)
class TagTarget:
    digest: Digest
    media_type: str
    size: int


class TagResolver(Protocol):
    async def resolve(self, image_name: str) -> TagTarget | None: ...


@dataclass(frozen=True, slots=True)
class OpenBlob:
    fd: int
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: Digest
    media_type: str
    content: bytes


# Manifests are read on every pull; keep the hot ones, within a fixed memory bound.
MANIFEST_CACHE_BYTES = 16 * 1024 * 1024

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Least-recently-used map bounded by entry count and, with `weigh`, by total weight."""

    def __init__(
        self,
        capacity: int,
        *,
        max_weight: int | None = None,
        weigh: Callable[[V], int] | None = None,
    ) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._capacity = capacity
        self._max_weight = max_weight
        self._weigh = weigh
        self.weight = 0

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.pop(key)
        self._items[key] = value
        if self._weigh is not None:
            self.weight += self._weigh(value)
        while len(self._items) > self._capacity or (
            self._max_weight is not None and self.weight > self._max_weight
        ):
            _, evicted = self._items.popitem(last=False)
            if self._weigh is not None:
                self.weight -= self._weigh(evicted)

    def pop(self, key: K) -> None:
        value = self._items.pop(key, None)
        if value is not None and self._weigh is not None:
            self.weight -= self._weigh(value)

    def clear(self) -> None:
        self._items.clear()
        self.weight = 0

    def __len__(self) -> int:
        return len(self._items)


class LocalStore:
    def __init__(
        self, content_root: Path, tags: TagResolver, *, tag_ttl: float = 2.0, cache_size: int = 4096
    ) -> None:
        self.content_root = content_root
        self._tags = tags
        self.tag_ttl = tag_ttl
        # Bumped whenever a tag may have moved, so answers derived from tags expire.
        self.generation = 0
        self._tag_cache: Lru[str, tuple[float, TagTarget | None]] = Lru(cache_size)
        # Content-addressed, so an entry can only go stale by the blob being deleted,
        # and then the bytes are still what the digest says.
        self._manifests: Lru[Digest, Manifest] = Lru(
            cache_size, max_weight=MANIFEST_CACHE_BYTES, weigh=lambda m: len(m.content)
        )

    def open_blob(self, digest: Digest) -> OpenBlob | None:
        try:
            fd = os.open(blob_path(self.content_root, digest), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
                return None
            raise
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        return OpenBlob(fd, size)

    def manifest(self, digest: Digest) -> Manifest | None:
        cached = self._manifests.get(digest)
        if cached is not None:
            if os.path.exists(blob_path(self.content_root, digest)):
                return cached
            self.forget_digest(digest)  # deleted under us (GC, `ctr content rm`)
            return None
        blob = self.open_blob(digest)
        if blob is None:
            return None
        try:
            content = b"" if blob.size > MAX_MANIFEST_SIZE else os.pread(blob.fd, blob.size, 0)
        finally:
            os.close(blob.fd)
        media_type = detect_manifest_type(content) if content else None
        if media_type is None:
            return None
        if hashlib.new(digest.algorithm, content).hexdigest() != digest.hex:
            log.error(
                "a local manifest does not match its digest: not served "
                "(remove it with `ctr content rm` and pull again)",
                extra={"digest": str(digest)},
            )
            return None
        manifest = Manifest(digest, media_type, content)
        self._manifests.put(digest, manifest)
        return manifest

    async def resolve_tag(self, image_name: str) -> TagTarget | None:
        now = trio.current_time()
        cached = self._tag_cache.get(image_name)
        if cached is not None and cached[0] > now:
            return cached[1]
        target = await self._tags.resolve(image_name)
        self._tag_cache.put(image_name, (now + self.tag_ttl, target))
        return target

    def forget_tag(self, image_name: str) -> None:
        self._tag_cache.pop(image_name)
        self.generation += 1

    def forget_digest(self, digest: Digest | str) -> None:
        """Content gone from the store: its cached manifest and every prepared answer."""
        key = digest if isinstance(digest, Digest) else parse_digest(digest)
        self._manifests.pop(key)
        self.generation += 1


def target_from(digest: str, media_type: str, size: int) -> TagTarget:
    return TagTarget(parse_digest(digest), media_type, size)
