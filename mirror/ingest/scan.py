"""Reading containerd's ingest directory without trusting it (blocking: run in a thread).

Only real directories with containerd's 64-hex names are looked at; `ref` and
`total` are read through `O_NOFOLLOW` with a size bound; `data` must be a regular
file, never followed through a link. A planted symlink or an odd file is skipped,
so nothing outside the content store is ever opened. Running out of file
descriptors (EMFILE, ENFILE) is not an entry's fault: it fails the whole scan, so
that no download in progress is taken for gone.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mirror.ingest.records import (
    MAX_REF_BYTES,
    MAX_TOTAL_BYTES,
    Ingest,
    digest_from_ref,
    is_ingest_dir_name,
    parse_total,
)

INGEST_DIR = "ingest"


def _unless_exhausted(exc: OSError) -> None:
    """Let an unusable entry be skipped, unless the process is out of descriptors."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        raise exc


def ingest_root(content_root: Path) -> Path:
    return content_root / INGEST_DIR


def ingest_dir_names(content_root: Path) -> set[str]:
    """The well-named entries of `ingest/` (empty if it cannot be listed)."""
    try:
        root_fd = os.open(ingest_root(content_root), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        _unless_exhausted(exc)
        return set()
    try:
        with os.scandir(root_fd) as entries:
            return {entry.name for entry in entries if is_ingest_dir_name(entry.name)}
    finally:
        os.close(root_fd)


def _read_small(dir_fd: int, name: str, limit: int) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        _unless_exhausted(exc)
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def read_ingest(root_fd: int, directory: str) -> Ingest | None:
    """One ingest directory under the open `ingest/` fd, or None if it is not a usable one."""
    if not is_ingest_dir_name(directory):
        return None
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    except OSError as exc:
        _unless_exhausted(exc)
        return None
    try:
        ref = _read_small(dir_fd, "ref", MAX_REF_BYTES)
        total_raw = _read_small(dir_fd, "total", MAX_TOTAL_BYTES)
        digest = digest_from_ref(ref) if ref is not None else None
        total = parse_total(total_raw) if total_raw is not None else None
        if digest is None or total is None:
            return None
        try:
            data = os.stat("data", dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            _unless_exhausted(exc)
            return None
        if not stat.S_ISREG(data.st_mode):
            return None
        return Ingest(directory, digest, total, data.st_size)
    finally:
        os.close(dir_fd)


def scan_ingests(content_root: Path, limit: int = 4096) -> dict[str, Ingest]:
    """Every usable ingest directory -> what it says; empty if there is no ingest dir."""
    try:
        root_fd = os.open(ingest_root(content_root), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        _unless_exhausted(exc)
        return {}
    found: dict[str, Ingest] = {}
    try:
        with os.scandir(root_fd) as entries:
            for entry in entries:
                if len(found) >= limit:
                    break
                ingest = read_ingest(root_fd, entry.name)
                if ingest is not None:
                    found[entry.name] = ingest
    finally:
        os.close(root_fd)
    return found


def open_ingest_data(content_root: Path, directory: str) -> int:
    """An fd on a growing `data` file (it keeps reading the blob after commit renames it).

    Raises OSError for anything but a regular file in a well-named ingest directory.
    """
    if not is_ingest_dir_name(directory):
        raise FileNotFoundError(directory)
    root_fd = os.open(ingest_root(content_root), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    try:
        fd = os.open("data", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(f"{directory}/data is not a regular file")
    return fd
