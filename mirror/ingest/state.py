"""What the cold-start machinery is doing right now, for metrics and the debug page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from mirror.ingest.records import Ingest
from mirror.mirroring.claimbook import ClaimBook
from mirror.server.streamcap import StreamCap


class _Downloads(Protocol):
    def all(self) -> list[Ingest]: ...


class _Counters(Protocol):
    announced: int
    committed: int
    aborted: int


@dataclass(frozen=True)
class ColdStartState:
    """Read-only: the live objects the node runs, summarized on demand."""

    downloads: _Downloads
    book: ClaimBook
    streams: StreamCap
    announcer: _Counters

    def in_progress(self) -> list[Ingest]:
        return self.downloads.all()

    def claims_held(self) -> list[str]:
        return self.book.held(trio.current_time())
