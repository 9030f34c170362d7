"""Follow containerd's ingest directory: inotify where it works, polling where not.

Any inotify event under `ingest/` (a directory appearing or going, `ref`/`total`
written, `data` growing) schedules a rescan a few milliseconds later, so a burst
of writes costs one scan. Each ingest directory gets its own watch for growth.
A slow periodic rescan runs too, so a missed or overflowed event queue only
delays an update. Without inotify (or without the directory) it polls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import inotify_simple
import trio

from mirror.ingest.records import InflightTable, Ingest, IngestChange
from mirror.ingest.scan import ingest_dir_names, ingest_root, scan_ingests

log = logging.getLogger("mirror.ingest")

_ROOT_MASK = (
    inotify_simple.flags.CREATE
    | inotify_simple.flags.DELETE
    | inotify_simple.flags.MOVED_FROM
    | inotify_simple.flags.MOVED_TO
    | inotify_simple.flags.DELETE_SELF
    | inotify_simple.flags.MOVE_SELF
    | inotify_simple.flags.ONLYDIR
)
_DIR_MASK = (
    inotify_simple.flags.MODIFY
    | inotify_simple.flags.CLOSE_WRITE
    | inotify_simple.flags.CREATE
    | inotify_simple.flags.MOVED_TO
    | inotify_simple.flags.MOVED_FROM
    | inotify_simple.flags.DELETE
    | inotify_simple.flags.ONLYDIR
)


class IngestWatcher:
    """The in-flight view of one content store, kept current while `run` runs."""

    def __init__(
        self,
        content_root: Path,
        *,
        on_change: Callable[[list[IngestChange]], None] | None = None,
        coalesce: float = 0.005,
        rescan_interval: float = 1.0,
        poll_interval: float = 0.05,
    ) -> None:
        self.content_root = content_root
        self.table = InflightTable()
        self._on_change = on_change
        self._coalesce = coalesce
        self._rescan_interval = rescan_interval
        self._poll_interval = poll_interval
        self._changed = trio.Event()
        self.mode = "stopped"
        self.scans = 0

    def get(self, digest: str) -> Ingest | None:
        return self.table.get(digest)

    def all(self) -> list[Ingest]:
        return self.table.all()

    async def wait_changed(self) -> None:
        """Until the next scan that changed anything."""
        await self._changed.wait()

    async def rescan(self) -> list[IngestChange]:
        try:
            found = await trio.to_thread.run_sync(scan_ingests, self.content_root)
        except OSError as exc:
            # Out of descriptors: keep what is known until a later scan can look.
            log.warning("ingest scan failed", extra={"error": str(exc)})
            return []
        self.scans += 1
        changes = self.table.update(found)
        if changes:
            self._changed.set()
            self._changed = trio.Event()
            if self._on_change is not None:
                self._on_change(changes)
        return changes

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        while True:
            try:
                notify = inotify_simple.INotify(nonblocking=True)
            except OSError as exc:
                log.warning("inotify unavailable; polling ingests", extra={"error": str(exc)})
                await self._poll(task_status)
                return
            with notify:
                try:
                    root_watch = notify.add_watch(ingest_root(self.content_root), _ROOT_MASK)
                except OSError:
                    # No ingest directory yet (or unreadable): poll until it exists.
                    await self._poll_until_root(task_status)
                    task_status = trio.TASK_STATUS_IGNORED
                    continue
                await self._follow(notify, root_watch, task_status)
                task_status = trio.TASK_STATUS_IGNORED

    async def _poll(self, task_status: trio.TaskStatus[None]) -> None:
        self.mode = "polling"
        await self.rescan()
        task_status.started()
        while True:
            await trio.sleep(self._poll_interval)
            await self.rescan()

    async def _poll_until_root(self, task_status: trio.TaskStatus[None]) -> None:
        self.mode = "polling"
        await self.rescan()
        task_status.started()
        while not await trio.Path(ingest_root(self.content_root)).is_dir():
            await trio.sleep(self._poll_interval)
            await self.rescan()

    async def _follow(
        self, notify: inotify_simple.INotify, root_watch: int, task_status: trio.TaskStatus[None]
    ) -> None:
        """Until the ingest directory itself goes away (then the caller starts over)."""
        self.mode = "inotify"
        watched: dict[str, int] = {}
        await self._watch_dirs(notify, watched)
        await self.rescan()
        task_status.started()
        next_rescan = trio.current_time() + self._rescan_interval
        while True:
            with trio.move_on_at(next_rescan):
                await trio.lowlevel.wait_readable(notify.fileno())
                await trio.sleep(self._coalesce)
            events = notify.read(timeout=0)
            if any(e.wd == root_watch and e.mask & _ROOT_GONE for e in events):
                return
            if events:
                await self._watch_dirs(notify, watched)
            await self.rescan()
            next_rescan = trio.current_time() + self._rescan_interval

    async def _watch_dirs(self, notify: inotify_simple.INotify, watched: dict[str, int]) -> None:
        root = ingest_root(self.content_root)
        try:
            names = await trio.to_thread.run_sync(ingest_dir_names, self.content_root)
        except OSError as exc:
            log.warning("ingest listing failed", extra={"error": str(exc)})
            return
        for name in list(watched):
            if name not in names:
                del watched[name]  # the kernel drops a deleted directory's watch itself
        for name in names - watched.keys():
            if len(watched) >= _MAX_WATCHES:
                break
            try:
                watched[name] = notify.add_watch(root / name, _DIR_MASK)
            except OSError:
                continue


_ROOT_GONE = (
    inotify_simple.flags.DELETE_SELF | inotify_simple.flags.MOVE_SELF | inotify_simple.flags.IGNORED
)
_MAX_WATCHES = 4096
