"""A `pause` entrypoint for the benchmark images, so that they run as pods (pure).

Spegel's benchmark images are built on `registry.k8s.io/pause`; ours are
generated offline, so they carry their own: a 129-byte static x86-64 ELF that
loops on the `pause(2)` system call, in a tiny base layer. Pods running it set
a short termination grace period, since PID 1 ignores SIGTERM without a handler.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile

BASE = 0x400000
# mov eax, 34 (SYS_pause); syscall; jmp back to the mov
CODE = bytes.fromhex("b822000000") + bytes.fromhex("0f05") + bytes.fromhex("ebf7")
EHDR_SIZE = 64
PHDR_SIZE = 56
ENTRYPOINT = "/pause"


def pause_elf() -> bytes:
    """ELF64 header, one PT_LOAD program header covering the file, then the code."""
    size = EHDR_SIZE + PHDR_SIZE + len(CODE)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, SysV
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        0x3E,  # EM_X86_64
        1,  # EV_CURRENT
        BASE + EHDR_SIZE + PHDR_SIZE,  # entry
        EHDR_SIZE,  # program headers right after this header
        0,  # no section headers
        0,
        EHDR_SIZE,
        PHDR_SIZE,
        1,
        0,
        0,
        0,
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)  # PT_LOAD, R+X
    return ehdr + phdr + CODE


def pause_layer(marker: str) -> bytes:
    """An uncompressed tar with `/pause` and a marker file, so each image's base is its own."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in (
            ("pause", pause_elf(), 0o755),
            ("etc/benchmark-image", marker.encode() + b"\n", 0o644),
        ):
            if name.startswith("etc/"):
                folder = tarfile.TarInfo("etc")
                folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, 1704067200
                tar.addfile(folder)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1704067200
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
