"""Aborting the local download a wrong relay poisoned: which ingests, and a retry
while containerd still flushes a write (its logic; the real abort is tested against
containerd in tests/containerd and tests/e2e/test_wrong_holder.py)."""

from __future__ import annotations

import trio

from mirror.containerd.errors import ContainerdError
from mirror.containerd.model import IngestStatus
from mirror.mirroring.poisoned import PoisonedIngests, poisoned_refs

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def _status(ref: str, expected: str = "") -> IngestStatus:
    return IngestStatus(ref=ref, offset=10, total=100, expected=expected)


def test_the_ingests_of_a_digest_are_found_by_ref_or_expected_digest() -> None:
    statuses = [
        _status(f"layer-{DIGEST}"),
        _status("k8s.io/1/anything", expected=DIGEST),
        _status(f"layer-{OTHER}"),
        _status("unnamed"),
    ]
    assert poisoned_refs(statuses, DIGEST) == [f"layer-{DIGEST}", "k8s.io/1/anything"]


class FlakyContainerd:
    """The first abort fails as containerd's does while a write is being flushed."""

    def __init__(self) -> None:
        self.refs = {f"layer-{DIGEST}", f"layer-{OTHER}"}
        self.failures = 1

    async def ingests(self) -> list[IngestStatus]:
        return [_status(ref) for ref in sorted(self.refs)]

    async def abort_ingest(self, ref: str) -> bool:
        if self.failures:
            self.failures -= 1
            raise ContainerdError("Content.Abort: UNKNOWN: unlinkat ...: directory not empty")
        self.refs.discard(ref)
        return True


async def test_a_failed_abort_is_tried_again_and_only_that_digest_goes() -> None:
    containerd = FlakyContainerd()
    poisoned = PoisonedIngests(containerd)
    with trio.fail_after(5):
        await poisoned.abort(DIGEST)
    assert containerd.refs == {f"layer-{OTHER}"}
    assert poisoned.aborted == 1
