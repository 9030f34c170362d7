"""Scanning a planted, hostile ingest directory never reads outside it or hangs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirror.ingest.scan import open_ingest_data, scan_ingests

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"


def _ingest(root: Path, name: str, ref: str, total: str = "10", data: bytes = b"abc") -> Path:
    directory = root / "ingest" / name
    directory.mkdir(parents=True)
    (directory / "ref").write_text(ref)
    (directory / "total").write_text(total)
    (directory / "data").write_bytes(data)
    return directory


def test_a_real_looking_ingest(tmp_path: Path) -> None:
    _ingest(tmp_path, "a" * 64, f"k8s.io/1/layer-{DIGEST}")
    found = scan_ingests(tmp_path)
    assert list(found) == ["a" * 64]
    ingest = found["a" * 64]
    assert (ingest.digest, ingest.total, ingest.size) == (DIGEST, 10, 3)
    fd = open_ingest_data(tmp_path, "a" * 64)
    try:
        assert os.read(fd, 10) == b"abc"
    finally:
        os.close(fd)


def test_no_ingest_directory(tmp_path: Path) -> None:
    assert scan_ingests(tmp_path) == {}


def test_planted_links_and_odd_files_are_skipped(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(f"k8s.io/1/layer-{DIGEST}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "ref").write_text(f"k8s.io/1/layer-{DIGEST}")
    (outside / "total").write_text("10")
    (outside / "data").write_bytes(b"outside")
    ingest = tmp_path / "ingest"
    ingest.mkdir()
    # A directory that is a symlink to somewhere else.
    (ingest / ("b" * 64)).symlink_to(outside)
    # ref as a symlink to a file outside.
    linked_ref = _ingest(tmp_path, "c" * 64, "unused")
    (linked_ref / "ref").unlink()
    (linked_ref / "ref").symlink_to(secret)
    # data as a symlink to a file outside.
    linked_data = _ingest(tmp_path, "d" * 64, f"k8s.io/1/layer-{DIGEST}")
    (linked_data / "data").unlink()
    (linked_data / "data").symlink_to(outside / "data")
    # a FIFO as ref: opening it must not block.
    fifo = _ingest(tmp_path, "e" * 64, "unused")
    (fifo / "ref").unlink()
    os.mkfifo(fifo / "ref")
    # a badly named directory with valid content.
    _ingest(tmp_path, "not-hex", f"k8s.io/1/layer-{DIGEST}")
    assert scan_ingests(tmp_path) == {}
    for name in ("b" * 64, "d" * 64, "not-hex", "../outside"):
        with pytest.raises(OSError):
            open_ingest_data(tmp_path, name)


def test_ingest_root_as_a_symlink_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    _ingest(elsewhere, "a" * 64, f"k8s.io/1/layer-{DIGEST}")
    store = tmp_path / "store"
    store.mkdir()
    (store / "ingest").symlink_to(elsewhere / "ingest")
    assert scan_ingests(store) == {}
