"""The trio-mirror container image, built without a container engine.

`make image` freezes `mirror` into one directory (PyInstaller with
MIRROR_ONEDIR=1: nothing is unpacked at start, so the root filesystem stays
read-only and the chart mounts nothing for it), then runs this module:

    python -m container.image build/onedir/mirror --out dist/image [--push REPOSITORY]

which writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`)
tagged with the release version, and with `--push` copies it to
`REPOSITORY:<version>` with skopeo. One gzip layer holds:

- the frozen program under /opt/trio-mirror (the entrypoint, as in the Containerfile);
- the C library it runs on, copied from the build host with the symlinks that
  lead to it (`/lib64/ld-linux-x86-64.so.2` and the libraries `ldd` names outside
  the program's own directory: glibc only, PyInstaller bundles the rest);
- /etc/passwd and /etc/group (root, and `mirror`, 65532, for what needs no host
  file) and /etc/nsswitch.conf (hosts: files, then DNS).

No CA certificates: the program opens no TLS connection (containerd fetches from
the upstream registries). The same input gives the same digest: entries sorted,
owned by root, with a fixed mtime, and gzip without a name or a time.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from bench.kit.images import (
    CONFIG_MEDIA_TYPE,
    CREATED,
    MANIFEST_MEDIA_TYPE,
    Blob,
    streamed_blob,
    tag_in_layout,
    tarinfo,
    write_json_blob,
)
from bench.kit.layers import HashingWriter
from mirror.version import VERSION

# Where the chart's default image comes from; `make image PUSH=...` sends it elsewhere.
DEFAULT_REPOSITORY = "ghcr.io/trio-mirror/trio-mirror"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
INSTALL_DIR = "opt/trio-mirror"
ENTRYPOINT = ("/opt/trio-mirror/mirror",)
CMD = ("registry",)
# Root, as Spegel's image: the registry reads containerd's socket (root, 0660) and
# content store, the init container writes under /etc/containerd/certs.d. The chart
# drops every capability. `mirror` (65532) is for runs that touch no host file.
USER = "0:0"
NONROOT_UID = 65532
PORTS = ("5000/tcp", "5001/udp", "9090/tcp")
ENV = ("PATH=/opt/trio-mirror:/usr/bin:/bin", "LANG=C.UTF-8")
ETC_FILES = {
    "etc/passwd": (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"mirror:x:{NONROOT_UID}:{NONROOT_UID}:trio-mirror:/nonexistent:/sbin/nologin\n"
    ),
    "etc/group": f"root:x:0:\nmirror:x:{NONROOT_UID}:\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
_MAX_SYMLINKS = 40


class ImageError(RuntimeError):
    """The program directory cannot be packed (a library missing, a symlink loop)."""


@dataclass(frozen=True)
class Entry:
    """One member of the layer: `name` is its path in the image, without a leading slash."""

    name: str
    kind: bytes
    mode: int = 0o755
    source: Path | None = None  # a regular file's content on the build host
    data: bytes = b""  # or its content
    target: str = ""  # a symlink's target


def _file_mode(path: Path) -> int:
    return 0o755 if path.stat().st_mode & 0o111 else 0o644


def program_entries(onedir: Path) -> list[Entry]:
    """Every file, directory and symlink of the frozen program, under INSTALL_DIR."""
    out = [Entry(INSTALL_DIR, tarfile.DIRTYPE)]
    for path in sorted(onedir.rglob("*")):
        name = f"{INSTALL_DIR}/{path.relative_to(onedir).as_posix()}"
        if path.is_symlink():
            out.append(Entry(name, tarfile.SYMTYPE, 0o777, target=os.readlink(path)))
        elif path.is_dir():
            out.append(Entry(name, tarfile.DIRTYPE))
        elif path.is_file():
            out.append(Entry(name, tarfile.REGTYPE, _file_mode(path), source=path))
    return out


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def parse_ldd(output: str) -> list[str]:
    """The absolute paths in `ldd` output; a library not found is an error."""
    paths = []
    for line in output.splitlines():
        name, arrow, resolved = line.strip().partition("=>")
        if arrow and resolved.strip().startswith("not found"):
            raise ImageError(f"ldd: {name.strip()} not found")
        path = (resolved if arrow else name).strip().split(" (")[0]
        if path.startswith("/"):
            paths.append(path)
    return paths


def system_libraries(onedir: Path) -> list[str]:
    """Host libraries the program loads from outside its directory, the loader included.

    The executable (PyInstaller's bootloader) is linked before anything is set up,
    so `ldd` sees it as the kernel starts it; every other file of the program with
    its `_internal` directory first in the search path, as the bootloader sets it,
    so what PyInstaller bundles is not copied twice.
    """
    plain = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    bundled = {**plain, "LD_LIBRARY_PATH": str(onedir / "_internal")}
    executable = onedir / "mirror"
    own = onedir.resolve()
    found: set[str] = set()
    for path in sorted(p for p in onedir.rglob("*") if p.is_file() and not p.is_symlink()):
        if not _is_elf(path):
            continue
        result = subprocess.run(
            ["ldd", str(path)],
            capture_output=True,
            text=True,
            env=plain if path == executable else bundled,
            check=False,
            timeout=60,
        )
        for library in parse_ldd(result.stdout):
            if not Path(library).resolve().is_relative_to(own):
                found.add(library)
    return sorted(found)


def host_entries(paths: Iterable[str]) -> list[Entry]:
    """Host files as image entries, with every symlink on the way to each one.

    `/lib64/ld-linux-x86-64.so.2` on Debian 12 gives the symlinks `lib64`,
    `usr/lib64/ld-linux-x86-64.so.2` and `lib`, and the file
    `usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`: the same paths work in the image.
    """
    out: dict[str, Entry] = {}
    for start in paths:
        path, hops = PurePosixPath(os.path.normpath(start)), 0
        while True:
            current = PurePosixPath("/")
            for i, part in enumerate(path.parts[1:], start=2):
                current = current / part
                name = str(current.relative_to("/"))
                if os.path.islink(current):
                    target = os.readlink(current)
                    out[name] = Entry(name, tarfile.SYMTYPE, 0o777, target=target)
                    rest = path.parts[i:]
                    path = PurePosixPath(os.path.normpath(os.path.join(current.parent, target)))
                    path = path.joinpath(*rest)
                    break
            else:
                host = Path(current)
                if not host.is_file():
                    raise ImageError(f"{start}: {current} is not a file")
                out[name] = Entry(name, tarfile.REGTYPE, _file_mode(host), source=host)
                break
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise ImageError(f"{start}: too many symlinks")
    return list(out.values())


def etc_entries() -> list[Entry]:
    return [
        Entry(name, tarfile.REGTYPE, 0o644, data=text.encode()) for name, text in ETC_FILES.items()
    ]


def with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """The entries and every directory above them, sorted by name (parents first)."""
    by_name = {entry.name: entry for entry in entries}
    for name in list(by_name):
        for parent in PurePosixPath(name).parents:
            if str(parent) == ".":
                continue
            existing = by_name.setdefault(str(parent), Entry(str(parent), tarfile.DIRTYPE))
            if existing.kind != tarfile.DIRTYPE:
                raise ImageError(f"{parent} is both a directory and a {existing.kind!r}")
    return [by_name[name] for name in sorted(by_name)]


def layer_entries(onedir: Path) -> list[Entry]:
    return with_parents(
        [*program_entries(onedir), *host_entries(system_libraries(onedir)), *etc_entries()]
    )


def _add(tar: tarfile.TarFile, entry: Entry) -> None:
    if entry.kind == tarfile.REGTYPE and entry.source is not None:
        info = tarinfo(entry.name, entry.kind, entry.source.stat().st_size, entry.mode)
        with open(entry.source, "rb") as f:
            tar.addfile(info, f)
    elif entry.kind == tarfile.REGTYPE:
        tar.addfile(
            tarinfo(entry.name, entry.kind, len(entry.data), entry.mode), io.BytesIO(entry.data)
        )
    else:
        info = tarinfo(entry.name, entry.kind, 0, entry.mode)
        info.linkname = entry.target
        tar.addfile(info)


def write_layer(layout: Path, entries: Sequence[Entry], compresslevel: int = 6) -> tuple[Blob, str]:
    """The gzip layer blob and its diff_id (the digest of the uncompressed tar)."""
    with (
        streamed_blob(layout) as compressed,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=compressed, compresslevel=compresslevel, mtime=0
        ) as gz,
    ):
        plain = HashingWriter(gz)
        with tarfile.TarFile(
            fileobj=cast(IO[bytes], plain), mode="w", format=tarfile.PAX_FORMAT
        ) as tar:
            for entry in entries:
                _add(tar, entry)
    return Blob(compressed.digest, compressed.size, LAYER_MEDIA_TYPE), plain.digest


def labels(version: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.title": "trio-mirror",
        "org.opencontainers.image.description": (
            "Peer-to-peer OCI registry mirror, a drop-in for Spegel"
        ),
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }


def image_config(diff_id: str, version: str, architecture: str) -> dict[str, Any]:
    return {
        "created": CREATED,
        "architecture": architecture,
        "os": "linux",
        "config": {
            "User": USER,
            "Entrypoint": list(ENTRYPOINT),
            "Cmd": list(CMD),
            "Env": list(ENV),
            "WorkingDir": "/",
            "ExposedPorts": {port: {} for port in PORTS},
            "Labels": labels(version),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": CREATED, "created_by": "make image (container/image.py)"}],
    }


def build(onedir: Path, out: Path, *, tag: str = VERSION, compresslevel: int = 6) -> Blob:
    """Write the image of `onedir` (PyInstaller's one-directory output) as the OCI
    layout `out`, replacing what was there; returns the manifest, tagged `tag`."""
    if not (onedir / "mirror").is_file():
        raise ImageError(f"{onedir}/mirror: not a PyInstaller one-directory build")
    architecture = ARCHITECTURES.get(platform.machine())
    if architecture is None:
        raise ImageError(f"unsupported machine {platform.machine()!r}")
    entries = layer_entries(onedir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    layer, diff_id = write_layer(out, entries, compresslevel)
    config = write_json_blob(out, image_config(diff_id, tag, architecture), CONFIG_MEDIA_TYPE)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    }
    top = write_json_blob(out, manifest, MANIFEST_MEDIA_TYPE)
    tag_in_layout(out, top, tag)
    return top


def push(
    layout: Path,
    repository: str,
    *,
    tag: str = VERSION,
    tls_verify: bool = True,
    timeout: float = 600.0,
) -> str:
    """`skopeo copy oci:<layout>:<tag> docker://<repository>:<tag>`; returns the pushed
    manifest's digest. Credentials are skopeo's (`skopeo login <registry>`)."""
    with tempfile.TemporaryDirectory(prefix="image-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        argv = ["skopeo", "copy", "--preserve-digests", f"--digestfile={digest_file}"]
        if not tls_verify:
            argv.append("--dest-tls-verify=false")
        argv += [f"oci:{layout}:{tag}", f"docker://{repository}:{tag}"]
        subprocess.run(argv, check=True, timeout=timeout)
        return digest_file.read_text().strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m container.image", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "onedir", type=Path, help="PyInstaller's one-directory build (build/onedir/mirror)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("dist/image"), help="the OCI layout to write"
    )
    parser.add_argument("--tag", default=VERSION, help="default: the release version")
    parser.add_argument("--push", metavar="REPOSITORY", help=f"e.g. {DEFAULT_REPOSITORY}")
    parser.add_argument(
        "--dest-tls-verify",
        default="true",
        choices=("true", "false"),
        help="false: a plain-HTTP registry",
    )
    args = parser.parse_args(argv)
    try:
        manifest = build(args.onedir, args.out, tag=args.tag)
    except ImageError as exc:
        print(f"make image: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: oci:{args.out}:{args.tag} -> {manifest.digest}")
    if args.push:
        digest = push(args.out, args.push, tag=args.tag, tls_verify=args.dest_tls_verify == "true")
        print(f"pushed {args.push}:{args.tag}@{digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
