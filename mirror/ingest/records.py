"""What one ingest directory says, and how a set of them changes (pure, no I/O).

containerd's local content store writes a download into
`<root>/ingest/<hex of sha256(ref)>/` with `ref` (for example
`k8s.io/1/layer-sha256:<hex>`: namespace, a sequence number, then the fetch's
own ref, which ends in the digest), `total` (the expected size) and `data`
(grows as bytes arrive, renamed into `blobs/` on commit). Everything read from
there is untrusted: names and contents are parsed strictly and bounded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# Longest `ref` / `total` file worth reading; containerd's are well under this.
MAX_REF_BYTES = 1024
MAX_TOTAL_BYTES = 32

_INGEST_DIR = re.compile(r"[0-9a-f]{64}")
_REF_DIGEST = re.compile(r"(?:^|[-/])(sha256:[0-9a-f]{64})$")
_TOTAL = re.compile(r"[0-9]{1,19}")


def is_ingest_dir_name(name: str) -> bool:
    return _INGEST_DIR.fullmatch(name) is not None


def digest_from_ref(raw: bytes) -> str | None:
    """`k8s.io/1/layer-sha256:<hex>` -> `sha256:<hex>`; None for anything else."""
    if len(raw) > MAX_REF_BYTES:
        return None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    match = _REF_DIGEST.search(text)
    return match.group(1) if match else None


def parse_total(raw: bytes) -> int | None:
    """The `total` file: a decimal byte count; None when absent, empty or malformed."""
    if len(raw) > MAX_TOTAL_BYTES:
        return None
    text = raw.decode("ascii", errors="replace").strip()
    return int(text) if _TOTAL.fullmatch(text) else None


@dataclass(frozen=True)
class Ingest:
    """One download in progress: `size` bytes of `total` are on disk under `directory`."""

    directory: str
    digest: str
    total: int
    size: int

    @property
    def complete(self) -> bool:
        return self.size >= self.total


@dataclass(frozen=True)
class IngestStarted:
    ingest: Ingest


@dataclass(frozen=True)
class IngestProgressed:
    ingest: Ingest


@dataclass(frozen=True)
class IngestEnded:
    """The directory is gone: committed (the blob now exists) or aborted."""

    ingest: Ingest


IngestChange = IngestStarted | IngestProgressed | IngestEnded


class InflightTable:
    """Digests being ingested now, updated from successive scans of the ingest directory.

    Two ingests of one digest can exist at once (two namespaces, or a retry):
    the digest's entry is the one furthest along, and it ends when the last ends.
    """

    def __init__(self) -> None:
        self._by_directory: dict[str, Ingest] = {}

    def get(self, digest: str) -> Ingest | None:
        best: Ingest | None = None
        for ingest in self._by_directory.values():
            if ingest.digest == digest and (best is None or ingest.size > best.size):
                best = ingest
        return best

    def all(self) -> list[Ingest]:
        best: dict[str, Ingest] = {}
        for ingest in self._by_directory.values():
            held = best.get(ingest.digest)
            if held is None or ingest.size > held.size:
                best[ingest.digest] = ingest
        return sorted(best.values(), key=lambda i: i.digest)

    def digests(self) -> frozenset[str]:
        return frozenset(i.digest for i in self._by_directory.values())

    def update(self, scan: Mapping[str, Ingest]) -> list[IngestChange]:
        """Replace the table with `scan` (directory -> ingest); the changes, ended first."""
        before_digests = self.digests()
        changes: list[IngestChange] = []
        previous, self._by_directory = self._by_directory, dict(scan)
        after_digests = self.digests()
        for directory, old in previous.items():
            if directory not in scan and old.digest not in after_digests:
                changes.append(IngestEnded(old))
        started = set(before_digests)
        for directory, new in sorted(scan.items()):
            seen = previous.get(directory)
            if seen is None and new.digest not in started:
                started.add(new.digest)
                changes.append(IngestStarted(new))
            elif seen != new:
                changes.append(IngestProgressed(new))
        return changes
