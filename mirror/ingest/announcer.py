"""The Trio shell that publishes this node's downloads in progress (`announce.py` decides).

The watcher calls `on_change` synchronously after each scan; the commands go
through an unbounded-but-coalesced queue (at most one pending per digest) to
`run`, which publishes them: in-flight records, a claim renewed while its
ingest grows, and at the end either the complete record (the blob is in
`blobs/` now, the advertiser takes it as a loose key) or a withdrawal, then
the claim's release (after an abort) or its last renewal (after a commit, for
the longest lease: late claimants are sent to this node's complete copy). That
last lease is released early if the committed blob later fails its proof
(`proofs.py`): the claimants it turns away would otherwise wait out their budget.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from dht.claims import MAX_LEASE
from mirror.advertise.walk import missing_digests
from mirror.ingest.announce import AnnounceCommand, AnnounceInflight, AnnouncePlan, IngestGone
from mirror.ingest.records import IngestChange, IngestEnded
from mirror.mirroring.claimbook import ClaimBook

log = logging.getLogger("mirror.ingest")


@dataclass(frozen=True, slots=True)
class Disown:
    digest: str


@dataclass(frozen=True, slots=True)
class ReleaseCommitted:
    digest: str


class InflightPublisher(Protocol):
    async def provide_inflight(self, key: str, done: int, total: int) -> None: ...

    async def withdraw_inflight(self, keys: Iterable[str]) -> None: ...

    async def claim(self, key: str, lease: float) -> object: ...

    async def release(self, key: str) -> None: ...


class IngestAnnouncer:
    def __init__(
        self,
        publisher: InflightPublisher,
        content_root: Path,
        book: ClaimBook,
        *,
        on_committed: Callable[[str], Awaitable[None]] | None = None,
        refresh: float = 3.0,
        committed_lease: float = MAX_LEASE,
    ) -> None:
        self._committed_lease = committed_lease
        self._publisher = publisher
        self._content_root = content_root
        self._book = book
        self._on_committed = on_committed
        self._plan = AnnouncePlan(refresh)
        self._pending: dict[str, AnnounceCommand | Disown | ReleaseCommitted] = {}
        self._renew: set[str] = set()
        # Downloads found damaged (disown): neither announced nor claimed any more.
        self._disowned: set[str] = set()
        # Committed blobs whose claim this node kept past the commit: digest -> expiry.
        self._kept: dict[str, float] = {}
        self._wake = trio.Event()
        self.announced = 0
        self.committed = 0
        self.aborted = 0

    def on_change(self, changes: list[IngestChange]) -> None:
        now = trio.current_time()
        for change in changes:
            digest = change.ingest.digest
            if isinstance(change, IngestEnded):
                self._disowned.discard(digest)
            elif digest not in self._disowned and self._book.renew_due(digest, now):
                self._renew.add(digest)
        for command in self._plan.changes(changes, now):
            if isinstance(command, AnnounceInflight) and command.digest in self._disowned:
                continue
            self._pending[command.digest] = command
        if self._pending or self._renew:
            self._wake.set()

    def disown(self, digest: str) -> None:
        """The download of `digest` proved damaged (serving.py): peers are no longer
        sent here for it, and its claim goes, so that another node fetches it."""
        if digest in self._disowned:
            return
        self._disowned.add(digest)
        self._renew.discard(digest)
        self._pending[digest] = Disown(digest)
        self._wake.set()

    def proof_failed(self, digest: str) -> None:
        """A committed blob of this node does not hash to its digest: a claim kept on
        it after its commit is released, so that another node fetches it."""
        expiry = self._kept.pop(digest, None)
        if expiry is None or expiry <= trio.current_time():
            return
        self._pending[digest] = ReleaseCommitted(digest)
        self._wake.set()

    def _forget_lapsed(self, now: float) -> None:
        self._kept = {key: expiry for key, expiry in self._kept.items() if expiry > now}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                pending, self._pending = self._pending, {}
                renew, self._renew = self._renew, set()
                for digest in renew:
                    nursery.start_soon(self._renew_claim, digest)
                for command in pending.values():
                    nursery.start_soon(self._publish, command)

    async def _renew_claim(self, digest: str) -> None:
        lease = self._book.lease
        self._book.won(digest, trio.current_time())  # renewed from now on our side
        try:
            await self._publisher.claim(digest, lease)
        except Exception:
            log.debug("claim renewal failed", extra={"digest": digest}, exc_info=True)

    async def _publish(self, command: AnnounceCommand | Disown | ReleaseCommitted) -> None:
        try:
            if isinstance(command, AnnounceInflight):
                await self._publisher.provide_inflight(command.digest, command.done, command.total)
                self.announced += 1
            elif isinstance(command, Disown):
                await self._publisher.withdraw_inflight([command.digest])
                if self._book.drop(command.digest):
                    await self._publisher.release(command.digest)
                log.warning(
                    "download damaged: in-flight record withdrawn, claim released",
                    extra={"digest": command.digest},
                )
            elif isinstance(command, ReleaseCommitted):
                await self._publisher.release(command.digest)
                log.warning(
                    "committed blob is wrong: its claim released", extra={"digest": command.digest}
                )
            else:
                await self._gone(command)
        except Exception:  # noqa: BLE001 - a failed announcement only costs sharing
            log.warning("in-flight announcement failed", extra={"digest": command.digest})

    async def _gone(self, command: IngestGone) -> None:
        digest = command.digest
        lost = await trio.to_thread.run_sync(missing_digests, self._content_root, [digest])
        if lost:
            self.aborted += 1
        else:
            self.committed += 1
            if self._on_committed is not None:
                await self._on_committed(digest)
        if command.announced:
            await self._publisher.withdraw_inflight([digest])
        if self._book.drop(digest):
            if lost:
                await self._publisher.release(digest)
            else:
                # Kept, not released: a node whose lookup misses the fresh complete
                # record still claims first, and is sent here instead of upstream.
                now = trio.current_time()
                self._forget_lapsed(now)
                self._kept[digest] = now + self._committed_lease
                await self._publisher.claim(digest, self._committed_lease)
        log.debug("ingest ended", extra={"digest": digest, "committed": not lost})
