"""The kit end to end: registry + skopeo push + two containerd nodes + ctr pulls."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bench.kit.containerd import ContainerdNode, start_containerds
from bench.kit.distribution import blob_exists, get_manifest
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import GeneratedImage, push_image
from bench.kit.procs import pid_alive, recorded_pids
from bench.kit.registry import UpstreamRegistry

from .conftest import Pushed, require_binaries, small_image

pytestmark = pytest.mark.integration


def assert_blobs_in_store(node: ContainerdNode, image: GeneratedImage, platforms: set[str]) -> None:
    wanted = [image.top] + [b for i in image.images if i.platform in platforms for b in i.blobs()]
    for blob in wanted:
        data = node.blob_path(blob.digest).read_bytes()
        assert len(data) == blob.size
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest
    others = {b.digest for b in image.blobs()} - {b.digest for b in wanted}
    assert not any(node.has_blob(d) for d in others)


def test_push_keeps_digests(pushed: Pushed) -> None:
    host = pushed.registry.host
    for image in (pushed.small, pushed.multi):
        assert get_manifest(host, image.name, image.tag).digest == image.digest
        for platform_image in image.images:
            manifest = get_manifest(host, image.name, platform_image.manifest.digest)
            assert manifest.digest == platform_image.manifest.digest
            for blob in (platform_image.config, *platform_image.layers):
                assert blob_exists(host, image.name, blob.digest)
    index = json.loads(get_manifest(host, pushed.multi.name, pushed.multi.tag).body)
    assert [m["digest"] for m in index["manifests"]] == [
        i.manifest.digest for i in pushed.multi.images
    ]


def test_pull_fills_one_content_store_only(pushed: Pushed, nodes: list[ContainerdNode]) -> None:
    n1, n2 = nodes
    result = n1.pull(pushed.ref(pushed.small))
    assert result.digest == pushed.small.digest and result.unpacked and result.duration > 0
    assert n1.images() == [(pushed.ref(pushed.small), pushed.small.digest)]
    assert_blobs_in_store(n1, pushed.small, {"linux/amd64"})
    assert n1.blob_digests() == {b.digest for b in pushed.small.blobs()}
    assert n2.images() == []
    assert n2.blob_digests() == set()

    n1.restart()
    assert n1.images() == [(pushed.ref(pushed.small), pushed.small.digest)]
    n1.remove_image(pushed.ref(pushed.small))
    assert n1.images() == []


def test_multi_arch_pull(pushed: Pushed, nodes: list[ContainerdNode]) -> None:
    n1, n2 = nodes
    ref = pushed.ref(pushed.multi)
    assert n1.pull(ref).digest == pushed.multi.digest
    assert_blobs_in_store(n1, pushed.multi, {"linux/amd64"})
    n2.pull(ref, all_platforms=True)
    assert_blobs_in_store(n2, pushed.multi, {"linux/amd64", "linux/arm64"})
    n1.pull(ref, platform="linux/arm64")
    assert_blobs_in_store(n1, pushed.multi, {"linux/amd64", "linux/arm64"})


def test_fetch_without_unpack(pushed: Pushed, nodes: list[ContainerdNode]) -> None:
    n1, _ = nodes
    result = n1.pull(pushed.ref(pushed.small), unpack=False)
    assert not result.unpacked
    assert n1.images() == [(pushed.ref(pushed.small), pushed.small.digest)]
    assert_blobs_in_store(n1, pushed.small, {"linux/amd64"})
    snapshots = n1.ctr("snapshots", "--snapshotter", n1.snapshotter, "ls").stdout.splitlines()
    assert snapshots[1:] == []


def test_everything_stops_and_cleans_up(tmp_path: Path) -> None:
    require_binaries()
    image = small_image(tmp_path / "image")
    with UpstreamRegistry(tmp_path / "registry") as registry:
        push_image(image.layout_dir, image.tag, image.ref(registry.host), tmp_dir=tmp_path)
        with start_containerds(2, tmp_path / "nodes") as nodes:
            write_hosts_toml(nodes[0].config_path, registry.host, registry.url)
            nodes[0].pull(image.ref(registry.host))
            node_pids = [n.pid for n in nodes]
            sockets = [p for n in nodes for p in (n.address, n.ttrpc_address)]
            assert all(pid is not None and pid in recorded_pids() for pid in node_pids)
            assert all(s.is_socket() for s in sockets)
        assert not any(pid_alive(pid) for pid in node_pids if pid is not None)
        assert not set(node_pids) & set(recorded_pids())
        assert not any(s.exists() for s in sockets)
        assert not any(n.dir.exists() for n in nodes)
        assert registry.alive()
        registry_pid = registry.pid
    assert registry_pid is not None and not pid_alive(registry_pid)
    assert registry_pid not in recorded_pids()


def test_node_with_native_snapshotter(pushed: Pushed, tmp_path: Path) -> None:
    with start_containerds(1, tmp_path, snapshotter="native") as (node,):
        write_hosts_toml(node.config_path, pushed.registry.host, pushed.registry.url)
        node.pull(pushed.ref(pushed.small))
        snapshots = node.ctr("snapshots", "--snapshotter", "native", "ls").stdout.splitlines()
        assert len(snapshots[1:]) == len(pushed.small.layers)
