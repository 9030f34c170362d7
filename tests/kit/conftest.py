"""Fixtures for the test kit's own tests: a registry with two pushed images, two nodes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.kit.containerd import ContainerdNode, start_containerds
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.registry import UpstreamRegistry

BINARIES = ("containerd", "ctr", "skopeo", "docker-registry")


def require_binaries() -> None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"missing binaries: {', '.join(missing)}")


@dataclass(frozen=True)
class Pushed:
    registry: UpstreamRegistry
    small: GeneratedImage
    multi: GeneratedImage

    def ref(self, image: GeneratedImage) -> str:
        return image.ref(self.registry.host)


def small_image(out: Path) -> GeneratedImage:
    return generate_image(
        out, name="kit/small", tag="v1", seed=1, total_size=2 << 20, layers=3, files_per_layer=2
    )


def multi_image(out: Path) -> GeneratedImage:
    return generate_image(
        out, name="kit/multi", tag="v1", seed=2, total_size=1 << 20, layers=2, multi_arch=True
    )


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    require_binaries()
    base = tmp_path_factory.mktemp("upstream")
    small = small_image(base / "small")
    multi = multi_image(base / "multi")
    with UpstreamRegistry(base / "registry") as registry:
        for image in (small, multi):
            push_image(image.layout_dir, image.tag, image.ref(registry.host))
        yield Pushed(registry, small, multi)


@pytest.fixture
def nodes(tmp_path: Path, pushed: Pushed) -> Iterator[list[ContainerdNode]]:
    """Two containerd nodes whose hosts dirs send the upstream's name to the upstream."""
    with start_containerds(2, tmp_path) as started:
        for node in started:
            write_hosts_toml(node.config_path, pushed.registry.host, pushed.registry.url)
        yield started
