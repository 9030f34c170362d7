"""Fixtures for tests against a real containerd (CRI disabled, own root and socket)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.kit.containerd import ContainerdNode
from bench.kit.releases import SERIES, ContainerdRelease, containerd_release

from .oci_archive import OciArchive, build_oci_archive


def require_containerd() -> None:
    if not (shutil.which("containerd") and shutil.which("ctr")):
        pytest.skip("containerd and ctr binaries are needed")


@pytest.fixture(scope="module", params=SERIES)
def release(request: pytest.FixtureRequest) -> ContainerdRelease:
    """Every client test runs on containerd 1.6, 1.7 and 2.1 (see bench/kit/releases.py)."""
    require_containerd()
    return containerd_release(str(request.param))


def _daemon(name: str, base: Path, release: ContainerdRelease) -> ContainerdNode:
    return ContainerdNode(name, base, containerd_binary=release.containerd, ctr_binary=release.ctr)


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, release: ContainerdRelease
) -> Iterator[ContainerdNode]:
    """One containerd daemon shared by a test module (tests must leave it running)."""
    with _daemon("node", tmp_path_factory.mktemp("ctd"), release) as daemon:
        yield daemon


@pytest.fixture
def own_node(tmp_path: Path, release: ContainerdRelease) -> Iterator[ContainerdNode]:
    """A containerd daemon for one test, which may stop and restart it."""
    with _daemon("own", tmp_path, release) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> OciArchive:
    path = tmp_path_factory.mktemp("oci") / "demo.tar"
    return build_oci_archive(path, "example.test/library/demo:1")


@pytest.fixture(scope="module")
def imported(node: ContainerdNode, archive: OciArchive) -> OciArchive:
    """`archive` imported (not unpacked) into the node's namespace."""
    import_archive(node, archive.path)
    return archive


def import_archive(node: ContainerdNode, path: Path, namespace: str | None = None) -> None:
    node.ctr("images", "import", "--no-unpack", str(path), namespace=namespace)
