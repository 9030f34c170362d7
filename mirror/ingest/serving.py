"""Answering a peer's GET for a blob this node's containerd is still downloading.

The answer comes at once: `Content-Length` is the ingest's `total`, a `Range`
is served from any offset (bytes not yet on disk are waited for), and a range
starting at or past `total` is a 416. The body follows `data` as it grows
(`growing.py`) and ends with a reset if the download is truncated, removed or
stalls. A node that has just won the claim for a digest waits briefly for its
containerd's ingest to show up: the claimant's peers ask the moment it wins.
Only peers are served from here, never this node's own containerd (whose
download it is).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import trio

from mirror.ingest.growing import GrowingFileBody, first_hole
from mirror.ingest.records import Ingest
from mirror.ingest.scan import open_ingest_data
from mirror.oci.ranges import Unsatisfiable, parse_range
from mirror.server.request import Request
from mirror.server.response import Response, blob_headers, range_not_satisfiable

log = logging.getLogger("mirror.ingest")

# Tells the peer it is reading a download in progress: `<bytes on disk>/<total>`.
INFLIGHT_HEADER = "X-Mirror-Inflight"


class IngestView(Protocol):
    def get(self, digest: str) -> Ingest | None: ...

    async def wait_changed(self) -> None: ...


class InflightBlobs:
    def __init__(
        self,
        view: IngestView,
        content_root: Path,
        *,
        expecting: Callable[[str], bool] = lambda digest: False,
        on_damaged: Callable[[str], None] = lambda digest: None,
        appear_timeout: float = 2.0,
        growth_stall_timeout: float = 10.0,
    ) -> None:
        self.view = view
        self.content_root = content_root
        self.expecting = expecting
        self.on_damaged = on_damaged
        self.appear_timeout = appear_timeout
        self.growth_stall_timeout = growth_stall_timeout

    async def _ingest(self, digest: str) -> Ingest | None:
        ingest = self.view.get(digest)
        if ingest is not None or not self.expecting(digest):
            return ingest
        with trio.move_on_after(self.appear_timeout):
            while ingest is None:
                await self.view.wait_changed()
                ingest = self.view.get(digest)
        return ingest

    async def response(self, request: Request, digest: str) -> Response | None:
        """The growing blob's answer, or None when this node is not downloading `digest`."""
        ingest = await self._ingest(digest)
        if ingest is None:
            return None
        total = ingest.total
        try:
            byte_range = parse_range(request.headers.get("range"), total)
        except Unsatisfiable:
            return range_not_satisfiable(total, "blob")
        headers = [*blob_headers(digest), (INFLIGHT_HEADER, f"{ingest.size}/{total}")]
        start, length, status = 0, total, 200
        if byte_range is not None:
            start, length, status = byte_range.start, byte_range.length, 206
            headers.append(("Content-Range", byte_range.content_range(total)))
        if request.method == "HEAD":
            return Response(status, headers, b"", handler="blob", declared_length=length)
        try:
            fd = open_ingest_data(self.content_root, ingest.directory)
        except OSError:
            return None  # committed or aborted since the scan: the caller looks again
        size = os.fstat(fd).st_size
        if size > total:
            os.close(fd)
            log.warning("ingest larger than its total", extra={"digest": digest})
            return None
        if first_hole(fd, size) < size:
            os.close(fd)
            log.warning("ingest truncated and written past: not served", extra={"digest": digest})
            self.on_damaged(digest)
            return None
        body = GrowingFileBody(
            fd,
            start,
            length,
            self.view.wait_changed,
            growth_stall_timeout=self.growth_stall_timeout,
            on_damaged=lambda: self.on_damaged(digest),
        )
        return Response(status, headers, body, handler="blob", source="inflight")
