"""Local blobs proven to hash to their digest before they are first served to a peer.

containerd checked every blob when it committed it, but a file can change on disk
later (an operator's mistake, a bad disk, tampering): a peer must not be sent it.
A blob is hashed once per file identity (device, inode, size, mtime); one proof
at a time runs on a worker thread, and concurrent requests wait for it.

Proving costs one read of the blob (about 0.6 s per GiB on this project's test
machine, from the page cache). A blob up to `inline_limit` is proven before its
first answer, so a wrong one is never sent and the peer goes to the next source;
a larger one is served at once while its proof runs (the requesting mirror
proves the bytes it relays, so a wrong one still never ends cleanly), and is
refused from the moment the proof fails.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable

import trio

from mirror.oci.digest import Digest

log = logging.getLogger("mirror.server")

INLINE_LIMIT = 512 * 1024 * 1024
CHUNK = 1024 * 1024

Identity = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


class BlobProofs:
    def __init__(
        self,
        inline_limit: int = INLINE_LIMIT,
        capacity: int = 65536,
        *,
        on_wrong: Callable[[str], None] | None = None,
    ) -> None:
        self.inline_limit = inline_limit
        self.on_wrong = on_wrong
        self.capacity = capacity
        # digest -> (identity, whether it hashed right)
        self._known: OrderedDict[str, tuple[Identity, bool]] = OrderedDict()
        self._running: dict[str, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(1)
        self.wrong = 0

    def verdict(self, digest: Digest, fd: int) -> bool | None:
        """True or False once this file was proven; None while it never was."""
        known = self._known.get(str(digest))
        if known is None or known[0] != _identity(fd):
            return None
        return known[1]

    async def servable(self, digest: Digest, fd: int) -> bool:
        """Whether the blob open as `fd` may go to a peer now; False: it is wrong."""
        verdict = self.verdict(digest, fd)
        if verdict is not None:
            return verdict
        size = os.fstat(fd).st_size
        if size > self.inline_limit:
            if str(digest) not in self._running:
                trio.lowlevel.spawn_system_task(self._prove_copy, digest, os.dup(fd))
            return True
        return await self._prove(digest, fd)

    async def _prove_copy(self, digest: Digest, own: int) -> None:
        """A proof in the background on a copy of the answer's fd (closed once sent)."""
        try:
            await self._prove(digest, own)
        except OSError as exc:
            log.warning(
                "could not prove a local blob", extra={"digest": str(digest), "error": str(exc)}
            )
        finally:
            os.close(own)

    async def _prove(self, digest: Digest, fd: int) -> bool:
        key = str(digest)
        while (running := self._running.get(key)) is not None:
            await running.wait()
            verdict = self.verdict(digest, fd)
            if verdict is not None:
                return verdict
        done = self._running[key] = trio.Event()
        try:
            identity = _identity(fd)
            actual = await trio.to_thread.run_sync(
                _hash_fd, fd, digest.algorithm, limiter=self._limiter
            )
            right = actual == digest.hex
            self._remember(key, identity, right)
            if not right:
                self.wrong += 1
                log.error(
                    "a local blob does not match its digest: not served to peers "
                    "(remove it with `ctr content rm` and pull again)",
                    extra={"digest": key, "hashes_to": f"{digest.algorithm}:{actual}"},
                )
                if self.on_wrong is not None:
                    self.on_wrong(key)
            return right
        finally:
            del self._running[key]
            done.set()

    def _remember(self, key: str, identity: Identity, right: bool) -> None:
        self._known.pop(key, None)
        self._known[key] = (identity, right)
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)


def _identity(fd: int) -> Identity:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _hash_fd(fd: int, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.hexdigest()
