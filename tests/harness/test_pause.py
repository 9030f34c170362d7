from __future__ import annotations

import io
import os
import platform
import signal
import struct
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from bench.harness.pause import BASE, pause_elf, pause_layer


def test_elf_header_points_at_the_code() -> None:
    elf = pause_elf()
    assert len(elf) == 129
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1
    e_type, machine, _, entry, phoff = struct.unpack_from("<HHIQQ", elf, 16)
    assert (e_type, machine, phoff) == (2, 0x3E, 64)
    assert entry == BASE + 120
    p_type, flags, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", elf, 64)
    assert (p_type, flags, offset, vaddr) == (1, 5, 0, BASE)
    assert filesz == memsz == len(elf)


def test_layer_holds_an_executable_pause_and_its_marker() -> None:
    with tarfile.open(fileobj=io.BytesIO(pause_layer("v1-10MB-1 salt=0"))) as tar:
        pause = tar.getmember("pause")
        assert pause.mode == 0o755 and pause.size == 129
        marker = tar.extractfile("etc/benchmark-image")
        assert marker is not None and marker.read() == b"v1-10MB-1 salt=0\n"
    assert pause_layer("a") == pause_layer("a")
    assert pause_layer("a") != pause_layer("b")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the pause binary is x86-64")
def test_pause_runs_until_killed(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(pause_elf())
    binary.chmod(0o755)
    process = subprocess.Popen([str(binary)])
    try:
        time.sleep(0.3)
        assert process.poll() is None
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
