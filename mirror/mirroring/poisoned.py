"""Downloads poisoned by wrong bytes from a peer, aborted in containerd.

A relay that found its bytes did not hash to the digest resets the client before
the end, but containerd keeps what it received in its ingest and resumes from
there on the next pull: with a wrong prefix every later pull of the image would
fail its commit. So before the reset the ingest of that digest is aborted
through containerd's content API, and the next attempt starts it afresh (from
another source: the bad one is distrusted, see distrust.py). Aborting later
would race with that attempt, which reuses the same ref.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from mirror.containerd.errors import ContainerdError
from mirror.containerd.model import IngestStatus

log = logging.getLogger("mirror.mirroring")

RETRY_DELAYS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)
ABORT_WITHIN = 2.0


class IngestControl(Protocol):
    async def ingests(self) -> list[IngestStatus]: ...

    async def abort_ingest(self, ref: str) -> bool: ...


def poisoned_refs(statuses: list[IngestStatus], digest: str) -> list[str]:
    """The ingests writing `digest`: by their expected digest, or by a ref that ends
    with it (ctr and the CRI name theirs `...-sha256:<hex>`)."""
    return [
        status.ref
        for status in statuses
        if status.expected == digest or status.ref.endswith(digest)
    ]


class PoisonedIngests:
    def __init__(self, control: IngestControl) -> None:
        self._control = control
        self.aborted = 0

    async def abort(self, digest: str) -> None:
        """Abort the downloads of `digest`; called while containerd waits for the
        body's held-back end, so it writes nothing meanwhile. A write still being
        flushed makes an abort fail ("directory not empty"): then again, shortly."""
        error = ""
        with trio.move_on_after(ABORT_WITHIN):
            for delay in RETRY_DELAYS:
                await trio.sleep(delay)
                try:
                    await self._abort_now(digest)
                    return
                except ContainerdError as exc:
                    error = str(exc)
        log.warning("could not abort a poisoned download", extra={"digest": digest, "error": error})

    async def _abort_now(self, digest: str) -> None:
        for ref in poisoned_refs(await self._control.ingests(), digest):
            if await self._control.abort_ingest(ref):
                self.aborted += 1
                log.warning(
                    "aborted a download poisoned by a peer's wrong bytes",
                    extra={"digest": digest, "ref": ref},
                )
