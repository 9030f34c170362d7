"""containerd releases side by side: 1.6 from the machine, 1.7 and 2.1 from Debian's archive.

1.6 is Debian 12's `containerd` package, installed by `make deps`. 1.7 (Debian
13, `trixie`) and 2.1 (`sid`) are fetched with `apt-get download` through a
private sources list and lists directory (the machine's apt state is never
touched), unpacked with `dpkg-deb -x` and cached, so every test run after the
first finds them at once. Nothing is installed system-wide.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.kit.procs import KitError

# series -> the Debian suite whose `containerd` package is that series.
ARCHIVE_SUITES = {"1.7": "trixie", "2.1": "sid"}
SERIES = ("1.6", *ARCHIVE_SUITES)
DEBIAN_URL = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class ContainerdRelease:
    series: str
    containerd: str
    ctr: str
    version: str


def cache_dir() -> Path:
    base = os.environ.get("TRIO_MIRROR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "trio-mirror"
    )
    return Path(base) / "containerd"


def _version_of(binary: str) -> str:
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    return out[2] if len(out) >= 3 else ""


def _checked(series: str, containerd: str, ctr: str) -> ContainerdRelease:
    version = _version_of(containerd)
    if not version.lstrip("v").startswith(series + "."):
        raise KitError(f"{containerd} is version {version!r}, not containerd {series}")
    return ContainerdRelease(series, containerd, ctr, version)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _apt(apt_dir: Path, *args: str) -> None:
    options = [
        f"-o=Dir::Etc::SourceList={apt_dir / 'sources.list'}",
        "-o=Dir::Etc::SourceParts=/dev/null",
        f"-o=Dir::State::Lists={apt_dir / 'lists'}",
        f"-o=Dir::Cache={apt_dir / 'cache'}",
        "-o=Dir::State::status=/dev/null",
        "-o=Debug::NoLocking=1",
    ]
    result = subprocess.run(
        ["apt-get", "-qq", *options, *args],
        cwd=apt_dir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise KitError(f"apt-get {' '.join(args)} failed:\n{result.stderr[-2000:]}")


def _fetch(series: str, target: Path) -> None:
    suite = ARCHIVE_SUITES[series]
    apt_dir = target.parent / f".apt-{series}"
    shutil.rmtree(apt_dir, ignore_errors=True)
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt_dir / sub).mkdir(parents=True)
    (apt_dir / "sources.list").write_text(f"deb [signed-by={KEYRING}] {DEBIAN_URL} {suite} main\n")
    _apt(apt_dir, "update")
    _apt(apt_dir, "download", f"containerd/{suite}")
    packages = sorted(apt_dir.glob("containerd_*.deb"))
    if not packages:
        raise KitError(f"apt-get download containerd/{suite} left no package")
    unpacked = target.with_name(target.name + ".partial")
    shutil.rmtree(unpacked, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(packages[0]), str(unpacked)], check=True, timeout=120)
    shutil.rmtree(target, ignore_errors=True)
    unpacked.rename(target)
    shutil.rmtree(apt_dir, ignore_errors=True)


def containerd_release(series: str) -> ContainerdRelease:
    """The binaries of containerd `series` ("1.6", "1.7" or "2.1"), fetched once if needed."""
    if series == "1.6":
        containerd, ctr = shutil.which("containerd"), shutil.which("ctr")
        if containerd is None or ctr is None:
            raise KitError("containerd 1.6 is not installed (apt-get install containerd)")
        return _checked(series, containerd, ctr)
    if series not in ARCHIVE_SUITES:
        raise KitError(f"unknown containerd series {series!r}: use one of {', '.join(SERIES)}")
    target = cache_dir() / series
    binaries = target / "usr" / "bin"
    with _locked(cache_dir() / f".{series}.lock"):
        if not (binaries / "containerd").is_file():
            _fetch(series, target)
    return _checked(series, str(binaries / "containerd"), str(binaries / "ctr"))
