"""A real node for the hot-path tests: containerd, the upstream registry, images, a mirror."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.kit.containerd import ContainerdNode
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.mirror import MirrorNode
from bench.kit.registry import UpstreamRegistry

MIB = 1024 * 1024


@dataclass
class NodeWithImages:
    containerd: ContainerdNode
    upstream: UpstreamRegistry
    image: GeneratedImage
    multi: GeneratedImage
    big: GeneratedImage
    workdir: Path

    def image_ref(self, image: GeneratedImage) -> str:
        return image.ref(self.upstream.host)


@pytest.fixture(scope="session")
def node_with_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWithImages]:
    base = tmp_path_factory.mktemp("hotpath")
    with UpstreamRegistry(base / "registry") as upstream, ContainerdNode("node-1", base) as node:
        image = generate_image(
            base / "layouts" / "small",
            name="team/app",
            tag="v1",
            seed=1,
            total_size=3 * MIB,
            layers=3,
        )
        multi = generate_image(
            base / "layouts" / "multi",
            name="team/multi",
            tag="v1",
            seed=2,
            total_size=MIB,
            layers=2,
            multi_arch=True,
        )
        big = generate_image(
            base / "layouts" / "big",
            name="team/big",
            tag="v1",
            seed=3,
            total_size=24 * MIB,
            layers=1,
        )
        for generated in (image, multi, big):
            push_image(generated.layout_dir, generated.tag, generated.ref(upstream.host))
        write_hosts_toml(node.config_path, upstream.host, upstream.url)
        for generated in (image, big):
            node.pull(generated.ref(upstream.host), unpack=False)
        node.pull(multi.ref(upstream.host), unpack=False, all_platforms=True)
        yield NodeWithImages(node, upstream, image, multi, big, base)


def start_mirror(
    env: NodeWithImages,
    name: str,
    *extra_args: str,
    host: str = "127.0.0.1",
    nofile: int | None = None,
) -> MirrorNode:
    mirror = MirrorNode(
        host=host,
        containerd_sock=env.containerd.address,
        workdir=env.workdir / name,
        extra_args=extra_args,
        name=name,
        nofile=nofile,
    )
    mirror.start()
    return mirror


@pytest.fixture(scope="session")
def mirror(node_with_images: NodeWithImages) -> Iterator[MirrorNode]:
    node = start_mirror(node_with_images, "mirror-main", "--registry-head-timeout=1s")
    try:
        yield node
    finally:
        node.stop()
