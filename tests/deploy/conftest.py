"""Fixtures for the deployment tests: a containerd with one image, and mirror processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.kit.containerd import ContainerdNode
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.procs import ManagedProcess, wait_until
from bench.kit.registry import UpstreamRegistry

KIT_BINARIES = ("containerd", "ctr", "skopeo", "docker-registry")
ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "container" / "binary" / "mirror.spec"
PYTHON_MIRROR = (sys.executable, "-m", "mirror")


@dataclass(frozen=True)
class NodeWithImage:
    containerd: ContainerdNode
    upstream: UpstreamRegistry
    image: GeneratedImage
    workdir: Path


@pytest.fixture(scope="session")
def node_with_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWithImage]:
    """A containerd holding a small two-layer image, pulled from a real upstream."""
    missing = [b for b in KIT_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"missing binaries: {', '.join(missing)}")
    base = tmp_path_factory.mktemp("deploy")
    with UpstreamRegistry(base / "registry") as upstream, ContainerdNode("node-1", base) as node:
        image = generate_image(
            base / "layout", name="team/app", tag="v1", seed=7, total_size=2 << 20, layers=2
        )
        ref = image.ref(upstream.host)
        push_image(image.layout_dir, image.tag, ref)
        write_hosts_toml(node.config_path, upstream.host, upstream.url)
        node.pull(ref, unpack=False)
        yield NodeWithImage(node, upstream, image, base)


def pyinstaller_build(dist: Path, *, onedir: bool = False) -> Path:
    """Freeze `mirror` from container/binary/mirror.spec into `dist` (about 20-40 s).

    Returns the one-file executable, or with `onedir` the directory holding the
    executable and its `_internal` files (what `make image` packs).
    """
    # The same epoch and hash seed as `make image`: PyInstaller's output is then the same
    # on every build.
    env = {
        **os.environ,
        "MIRROR_ONEDIR": "1" if onedir else "0",
        "SOURCE_DATE_EPOCH": "1704067200",
        "PYTHONHASHSEED": "0",
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level=WARN",
            f"--distpath={dist}",
            f"--workpath={dist.parent / 'work'}",
            str(SPEC),
        ],
        check=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    return dist / "mirror"


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free on `host` a moment ago (for a DHT router)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def start_mirror_process(
    argv: Sequence[str],
    *,
    workdir: Path,
    probe_url: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> ManagedProcess:
    """Start `argv` and wait until `probe_url` answers 200; stopped by the caller."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = ManagedProcess(argv, log_path=workdir / "mirror.log", env=env, name="mirror")
    process.start()
    try:
        wait_until(lambda: http_status(probe_url) == 200, timeout, what=probe_url, proc=process)
    except BaseException:
        process.stop()
        raise
    return process
