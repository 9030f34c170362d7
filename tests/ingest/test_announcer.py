"""The announcer's shell: a download found damaged is disowned at once (in-flight
record withdrawn, claim released) and neither announced nor renewed again until it
ends. The publisher is a recorder of the DHT calls (this is the shell's logic, not
the DHT's)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from mirror.ingest.announcer import IngestAnnouncer
from mirror.ingest.records import Ingest, IngestEnded, IngestProgressed, IngestStarted
from mirror.mirroring.claimbook import ClaimBook

DIGEST = "sha256:" + "ab" * 32


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def provide_inflight(self, key: str, done: int, total: int) -> None:
        self.calls.append(("provide_inflight", key))

    async def withdraw_inflight(self, keys: Iterable[str]) -> None:
        self.calls.extend(("withdraw_inflight", key) for key in keys)

    async def claim(self, key: str, lease: float) -> object:
        self.calls.append(("claim", key))
        return None

    async def release(self, key: str) -> None:
        self.calls.append(("release", key))


def _ingest(size: int) -> Ingest:
    return Ingest(directory="d" * 64, digest=DIGEST, total=1000, size=size)


async def test_a_damaged_download_is_disowned_until_it_ends(tmp_path: Path) -> None:
    publisher = Recorder()
    book = ClaimBook(lease=1.0)
    book.won(DIGEST, trio.current_time())
    announcer = IngestAnnouncer(publisher, tmp_path, book, refresh=0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(announcer.run)
        announcer.on_change([IngestStarted(_ingest(100))])
        await trio.sleep(0.05)
        assert ("provide_inflight", DIGEST) in publisher.calls
        publisher.calls.clear()

        announcer.disown(DIGEST)
        await trio.sleep(0.05)
        assert publisher.calls == [("withdraw_inflight", DIGEST), ("release", DIGEST)]
        assert not book.holds(DIGEST, trio.current_time())
        publisher.calls.clear()

        await trio.sleep(0.6)  # past the renewal point of the lease it no longer holds
        announcer.on_change([IngestProgressed(_ingest(600))])
        await trio.sleep(0.05)
        assert publisher.calls == []  # neither announced nor claimed again

        announcer.on_change([IngestEnded(_ingest(600))])
        await trio.sleep(0.05)
        announcer.on_change([IngestStarted(_ingest(10))])  # a fresh download: announced
        await trio.sleep(0.05)
        assert ("provide_inflight", DIGEST) in publisher.calls
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def _committed(
    root: Path, committed_lease: float
) -> AsyncIterator[tuple[IngestAnnouncer, Recorder]]:
    """A running announcer after a claimed download committed: the claim is kept for
    the committed lease."""
    publisher = Recorder()
    book = ClaimBook(lease=1.0)
    book.won(DIGEST, trio.current_time())
    announcer = IngestAnnouncer(publisher, root, book, refresh=0.0, committed_lease=committed_lease)
    blob = root / "blobs" / "sha256" / DIGEST.removeprefix("sha256:")
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"x" * 1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(announcer.run)
        announcer.on_change([IngestStarted(_ingest(100))])
        await trio.sleep(0.05)
        announcer.on_change([IngestEnded(_ingest(1000))])
        await trio.sleep(0.05)
        assert publisher.calls[-1] == ("claim", DIGEST)
        publisher.calls.clear()
        yield announcer, publisher
        nursery.cancel_scope.cancel()


async def test_a_committed_blob_failing_its_proof_releases_its_kept_claim(
    tmp_path: Path,
) -> None:
    async with _committed(tmp_path, committed_lease=30.0) as (announcer, publisher):
        announcer.proof_failed("sha256:" + "cd" * 32)  # never claimed here: nothing
        await trio.sleep(0.05)
        assert publisher.calls == []

        announcer.proof_failed(DIGEST)
        await trio.sleep(0.05)
        assert publisher.calls == [("release", DIGEST)]

        announcer.proof_failed(DIGEST)  # released once
        await trio.sleep(0.05)
        assert publisher.calls == [("release", DIGEST)]


async def test_a_lapsed_kept_claim_is_not_released(tmp_path: Path) -> None:
    async with _committed(tmp_path, committed_lease=0.2) as (announcer, publisher):
        await trio.sleep(0.3)  # the arbiter forgot it: another node may hold it now
        announcer.proof_failed(DIGEST)
        await trio.sleep(0.05)
        assert publisher.calls == []
