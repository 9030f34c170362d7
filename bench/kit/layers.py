"""Image layer blobs: a tar stream, plain or gzip or zstd compressed, hashed both ways as written.

Two kinds of content:

- `random`: one directory of seeded random files (incompressible), the kit's
  original layers.
- `tree`: what a real layer holds. Every layer `k` has a directory `layer-k/`
  with binary and text files, a symlink, a hardlink, a file the next layer
  deletes and a directory the next layer makes opaque; every layer after the
  first carries those two whiteouts (the OCI layer format's `.wh.<name>` and
  `.wh..wh..opq`); the first also has `etc/os-release`. `tree_view(n)` says what
  an image of `n` such layers looks like once unpacked.

A compressed layer's digest is that of the compressed bytes and its diff_id
that of the tar inside. zstd needs the `zstandard` package (the `bench` and
`dev` extras); Python's standard library has none before 3.14.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

CHUNK = 1 << 20
# Fixed timestamps keep generated blobs byte-identical across runs.
MTIME = 1704067200

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
COMPRESSIONS = {
    "none": LAYER_MEDIA_TYPE,
    "gzip": LAYER_MEDIA_TYPE + "+gzip",
    "zstd": LAYER_MEDIA_TYPE + "+zstd",
}
CONTENTS = ("random", "tree")
# Bytes become text with 16 letters, spaces and newlines: about 2x smaller compressed.
_TEXT = bytes.maketrans(bytes(range(256)), (b"etaoinshrdlucmfw" * 15 + b"  \n\n" * 4)[:256])


@dataclass(frozen=True)
class WrittenLayer:
    digest: str  # sha256:<hex> of the blob as stored (compressed)
    size: int
    diff_id: str  # sha256:<hex> of the uncompressed tar
    media_type: str


class HashingWriter:
    """A write-only stream that hashes and counts what goes through it to `sink`."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self._sink.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if hasattr(self._sink, "flush"):
            self._sink.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


@contextmanager
def streamed_blob(blob_dir: Path) -> Iterator[HashingWriter]:
    """A blob written through a HashingWriter, stored as `blob_dir/<hex>` on success.

    The writer is hashed as it goes, so a blob of any size never sits in memory; it is
    renamed to its digest when the block ends without an error, removed otherwise.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-blob-", dir=blob_dir)
    os.fchmod(fd, 0o644)  # as any blob of the layout, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as f:
            writer = HashingWriter(f)
            yield writer
        os.replace(tmp_name, blob_dir / writer.sha.hexdigest())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def zstandard_module() -> Any:
    """The `zstandard` package, or an error saying which extra brings it."""
    try:
        import zstandard
    except ImportError as exc:
        raise ModuleNotFoundError(
            "zstd layers need the zstandard package: pip install 'trio-mirror[bench]'",
            name="zstandard",
        ) from exc
    return zstandard


@contextmanager
def _compressor(sink: HashingWriter, compression: str) -> Iterator[Any]:
    if compression == "none":
        yield sink
    elif compression == "gzip":
        # No name and mtime 0 in the header: the same tar gives the same blob. Level 6 is
        # Go's default, which registries' gzip layers mostly have.
        with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6) as gz:
            yield gz
    elif compression == "zstd":
        compressor = zstandard_module().ZstdCompressor(level=3)
        with compressor.stream_writer(sink, closefd=False) as zst:
            yield zst
    else:
        raise ValueError(
            f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}"
        )


class SeededReader:
    """`size` seeded bytes for tarfile.addfile: random, or random mapped to text."""

    def __init__(self, rng: random.Random, size: int, *, text: bool = False) -> None:
        self._rng = rng
        self._left = size
        self._text = text

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        data = self._rng.randbytes(n)
        return data.translate(_TEXT) if self._text else data


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def tar_info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, mode: int = 0o644
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _dir(tar: tarfile.TarFile, name: str) -> None:
    tar.addfile(tar_info(name, tarfile.DIRTYPE, mode=0o755))


def _small(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    tar.addfile(tar_info(name, size=len(data)), io.BytesIO(data))


def _random_content(
    tar: tarfile.TarFile, rng: random.Random, index: int, size: int, files: int
) -> None:
    top = f"layer-{index}"
    _dir(tar, top)
    for i, part in enumerate(split(size, files)):
        tar.addfile(tar_info(f"{top}/data-{i}.bin", size=part), SeededReader(rng, part))


def _tree_content(
    tar: tarfile.TarFile, rng: random.Random, index: int, size: int, files: int
) -> None:
    top = f"layer-{index}"
    if index == 0:
        _dir(tar, "etc")
        _small(tar, "etc/os-release", 'ID=kit\nNAME="bench.kit generated image"\n')
    else:
        below = f"layer-{index - 1}"
        _dir(tar, below)
        tar.addfile(tar_info(f"{below}/.wh.gone.txt"))
        _dir(tar, f"{below}/opaque")
        tar.addfile(tar_info(f"{below}/opaque/.wh..wh..opq"))
        _small(tar, f"{below}/opaque/new.txt", f"replaced by layer {index}\n")
    for d in (top, f"{top}/bin", f"{top}/share", f"{top}/share/doc", f"{top}/opaque"):
        _dir(tar, d)
    for i, part in enumerate(split(size, max(files, 2))):
        name = f"{top}/bin/data-{i}.bin"
        tar.addfile(tar_info(name, size=part, mode=0o755), SeededReader(rng, part, text=i % 2 == 1))
    link = tar_info(f"{top}/bin/current", tarfile.SYMTYPE, mode=0o777)
    link.linkname = "data-0.bin"
    tar.addfile(link)
    hard = tar_info(f"{top}/bin/data-0.hardlink", tarfile.LNKTYPE, mode=0o755)
    hard.linkname = f"{top}/bin/data-0.bin"
    tar.addfile(hard)
    _small(tar, f"{top}/share/doc/README", f"layer {index} of a bench.kit image\n" * 64)
    _small(tar, f"{top}/gone.txt", f"deleted by layer {index + 1}\n")
    _small(tar, f"{top}/opaque/old.txt", f"hidden by layer {index + 1}\n")


def write_layer(
    blob_dir: Path,
    seed: str,
    index: int,
    size: int,
    files: int,
    *,
    compression: str = "none",
    content: str = "random",
) -> WrittenLayer:
    """Stream layer `index` into `blob_dir/<hex>`: `size` bytes of file payload over `files`
    files (at least 2 for `tree`), the same bytes for the same arguments."""
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}"
        )
    if content not in CONTENTS:
        raise ValueError(f"unknown layer content {content!r}: use one of {', '.join(CONTENTS)}")
    rng = random.Random(seed)
    with streamed_blob(blob_dir) as stored, _compressor(stored, compression) as packed:
        tarred = HashingWriter(packed)
        with tarfile.TarFile(
            fileobj=cast(IO[bytes], tarred),
            mode="w",
            format=tarfile.PAX_FORMAT,
            copybufsize=CHUNK,
        ) as tar:
            fill = _tree_content if content == "tree" else _random_content
            fill(tar, rng, index, size, files)
    return WrittenLayer(stored.digest, stored.size, tarred.digest, COMPRESSIONS[compression])


@dataclass(frozen=True)
class TreeView:
    """What an image of `tree` layers shows once unpacked: paths that must be there (a
    file, a symlink with its target, or a hardlink of another path) and paths its
    whiteouts removed."""

    files: tuple[str, ...]
    symlinks: dict[str, str]
    hardlinks: dict[str, str]
    absent: tuple[str, ...]


def tree_view(layers: int) -> TreeView:
    files = ["etc/os-release"]
    symlinks: dict[str, str] = {}
    hardlinks: dict[str, str] = {}
    absent: list[str] = []
    for k in range(layers):
        top = f"layer-{k}"
        files += [f"{top}/bin/data-0.bin", f"{top}/bin/data-1.bin", f"{top}/share/doc/README"]
        symlinks[f"{top}/bin/current"] = "data-0.bin"
        hardlinks[f"{top}/bin/data-0.hardlink"] = f"{top}/bin/data-0.bin"
        if k < layers - 1:
            absent += [f"{top}/gone.txt", f"{top}/opaque/old.txt"]
            files.append(f"{top}/opaque/new.txt")
        else:
            files += [f"{top}/gone.txt", f"{top}/opaque/old.txt"]
    return TreeView(tuple(files), symlinks, hardlinks, tuple(absent))


def is_whiteout_device(path: Path) -> bool:
    """overlayfs's whiteout: a character device 0/0 (how containerd unpacks `.wh.<name>`)."""
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
