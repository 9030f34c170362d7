"""When to tell the DHT about this node's downloads in progress (pure; the caller passes `now`).

Fed the watcher's changes, it answers with what to publish:
- `AnnounceInflight`: an in-flight provider record with progress, first as soon
  as an ingest has bytes (a source with nothing yet is of no use to anyone),
  then again every `refresh` seconds while it grows (the records' TTL is short,
  and resumes pick sources by progress);
- `IngestGone`: the download ended, committed or aborted; the shell looks
  which and publishes the complete record or withdraws.
A burst of changes costs dictionary lookups, not datagrams.
"""

from __future__ import annotations

from dataclasses import dataclass

from mirror.ingest.records import IngestChange, IngestEnded


@dataclass(frozen=True, slots=True)
class AnnounceInflight:
    digest: str
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class IngestGone:
    digest: str
    announced: bool


AnnounceCommand = AnnounceInflight | IngestGone


class AnnouncePlan:
    def __init__(self, refresh: float = 3.0) -> None:
        self.refresh = refresh
        self._last: dict[str, float] = {}  # digest -> when last announced

    def __len__(self) -> int:
        return len(self._last)

    def changes(self, changes: list[IngestChange], now: float) -> list[AnnounceCommand]:
        commands: list[AnnounceCommand] = []
        for change in changes:
            ingest = change.ingest
            if isinstance(change, IngestEnded):
                announced = self._last.pop(ingest.digest, None) is not None
                commands.append(IngestGone(ingest.digest, announced))
                continue
            if ingest.size <= 0:
                continue
            last = self._last.get(ingest.digest)
            if last is None or now - last >= self.refresh:
                self._last[ingest.digest] = now
                commands.append(AnnounceInflight(ingest.digest, ingest.size, ingest.total))
        return commands
