"""Pulls the way kubelet makes them: CRI runtime.v1 PullImage on real containerd daemons.

Per containerd series (1.6 and 1.7 with the CRI plugin on; 2.1, whose CRI pulls
go through the transfer service) a 3-node cluster: containerd with its CRI
registry config_path at the node's hosts dir (written by the real
`mirror configuration`), the real upstream registry, real `mirror registry`
processes. Node 3 runs with `discard_unpacked_layers = true`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.kit.cluster import configure_containerd
from bench.kit.containerd import ContainerdNode
from bench.kit.cri import CriImageClient
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.mirror import MirrorNode
from bench.kit.registry import UpstreamRegistry
from bench.kit.releases import containerd_release
from tests.containerd.conftest import require_containerd
from tests.httpclient import fetch

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


@dataclass
class Node:
    containerd: ContainerdNode
    mirror: MirrorNode
    cri: CriImageClient

    def stats(self) -> dict[str, Any]:
        url = self.mirror.metrics_url + "/debug/web/stats"
        with urllib.request.urlopen(url, timeout=5) as reply:
            result: dict[str, Any] = json.loads(reply.read())
        return result

    def advertised_per_registry(self) -> dict[tuple[str, str], float]:
        url = self.mirror.metrics_url + "/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        return {
            (sample.name, sample.labels.get("registry", "")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name in ("spegel_advertised_images", "spegel_advertised_keys")
        }


@dataclass
class Cluster:
    series: str
    base: Path
    upstream: UpstreamRegistry
    nodes: list[Node]

    def image(self, name: str, seed: int, size: int = 2 * MIB, layers: int = 2) -> GeneratedImage:
        image = generate_image(
            self.base / "layouts" / name,
            name=f"library/{name}",
            tag="v1",
            seed=seed,
            total_size=size,
            layers=layers,
        )
        push_image(image.layout_dir, image.tag, image.ref(self.upstream.host))
        return image


@pytest.fixture(scope="module", params=["1.6", "1.7", "2.1"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    require_containerd()
    series = str(request.param)
    release = containerd_release(series)
    base = tmp_path_factory.mktemp(f"cri{series}")
    upstream = UpstreamRegistry(base / "upstream")
    containerds = [
        ContainerdNode(
            f"n{i}",
            base,
            containerd_binary=release.containerd,
            ctr_binary=release.ctr,
            cri=True,
            discard_unpacked_layers=(i == 3),
        )
        for i in (1, 2, 3)
    ]
    mirrors = [
        MirrorNode(
            host=f"127.0.0.{i}",
            containerd_sock=c.address,
            workdir=base / f"mirror-{i}",
            name=f"mirror-{i}",
            containerd_config_file=c.config_file,
            extra_args=[f"--containerd-registry-config-path={c.config_path}"],
        )
        for i, c in enumerate(containerds, start=1)
    ]
    routers = [f"{m.host}:{m.router_port}" for m in mirrors]
    for m in mirrors:
        m.process.argv += ["--bootstrap-kind=static", "--static-bootstrap-peers", *routers]
    started: list[Any] = []
    try:
        upstream.start()
        started.append(upstream)
        for c, m in zip(containerds, mirrors, strict=True):
            c.start()
            started.append(c)
            configure_containerd(c, [upstream.url], [m.url])
        for m in mirrors:
            m.start(wait_ready=False)
            started.append(m)
        for m in mirrors:
            m.start_wait_ready()
        nodes = [
            Node(c, m, CriImageClient(c.address)) for c, m in zip(containerds, mirrors, strict=True)
        ]
        for node in nodes:
            node.cri.wait_ready()
        yield Cluster(series, base, upstream, nodes)
        for node in nodes:
            node.cri.close()
    finally:
        for part in reversed(started):
            part.stop()


def _wait(what: str, check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def _served_by_peer(node: Node, path: str) -> bool:
    reply = fetch(node.mirror.address, path, method="HEAD")
    return reply.status == 200 and bool(reply.header("X-Mirror-Peer"))


def _wait_image_through_peer(cluster: Cluster, node: Node, image: GeneratedImage) -> None:
    ns = f"?ns={cluster.upstream.host}"
    paths = [f"/v2/{image.name}/manifests/{image.tag}{ns}"]
    for blob in image.images[0].blobs():
        section = "manifests" if blob.digest == image.digest else "blobs"
        paths.append(f"/v2/{image.name}/{section}/{blob.digest}{ns}")
    for path in paths:
        _wait(f"{path} through a peer", lambda p=path: _served_by_peer(node, p))


def _assert_blobs_match(node: Node, image: GeneratedImage) -> None:
    for blob in image.images[0].blobs():
        path = node.containerd.blob_path(blob.digest)
        assert path.is_file(), f"{blob.digest} missing on {node.containerd.name}"
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == blob.digest


def test_seed_then_peers_without_upstream(cluster: Cluster) -> None:
    """Node 1 pulls from upstream; upstream stops; nodes 2 and 3 pull through mirrors."""
    n1, n2, n3 = cluster.nodes
    image = cluster.image("seed", seed=21)
    ref = image.ref(cluster.upstream.host)
    pulled = n1.cri.pull(ref)
    assert pulled.image_ref == image.images[0].config.digest
    # Kubelet's names: containerd records exactly the ref, and node 1's mirror
    # advertises that name as its tag key (node 2 resolves the tag through it).
    assert ref in dict(n1.containerd.images())
    status = n1.cri.status(ref)
    assert status is not None and status.repo_tags == (ref,)
    _wait_image_through_peer(cluster, n2, image)
    cluster.upstream.stop()
    try:
        assert n2.cri.pull(ref).image_ref == pulled.image_ref
        _assert_blobs_match(n2, image)
        # Always policy: kubelet pulls again although the image is present.
        assert n2.cri.pull(ref).image_ref == pulled.image_ref
        by_digest = f"{cluster.upstream.host}/{image.name}@{image.digest}"
        assert n3.cri.pull(by_digest).image_ref == pulled.image_ref
        assert n3.cri.status(by_digest) is not None
    finally:
        cluster.upstream.start()


def test_image_id_record_is_not_a_tag(cluster: Cluster) -> None:
    n1 = cluster.nodes[0]
    image = cluster.image("ids", seed=22, size=MIB, layers=1)
    ref = image.ref(cluster.upstream.host)
    image_id = n1.cri.pull(ref).image_ref
    # CRI's three records: the tag, the digest reference and the bare image ID.
    names = dict(n1.containerd.images())
    assert image_id in names and ref in names

    def settled() -> dict[str, Any] | None:
        stats = n1.stats()
        listed = {row["name"] for row in stats["images"]}
        return stats if ref in listed else None

    stats = _wait("image advertised", settled)
    rows = stats["images"]
    assert not [row for row in rows if row["name"].startswith("sha256:")]
    assert {row["registry"] for row in rows} == {cluster.upstream.host}
    assert {row["repository"] for row in rows} <= {"library/seed", "library/ids"}
    assert not [key for key in n1.advertised_per_registry() if key[1] == "docker.io"]


def test_discarded_layers_are_not_advertised(cluster: Cluster) -> None:
    """discard_unpacked_layers on node 3: its pulls work, and GC'd layers are withdrawn."""
    n3 = cluster.nodes[2]
    image = cluster.image("discard", seed=23, size=2 * MIB, layers=2)
    ref = image.ref(cluster.upstream.host)
    n3.cri.pull(ref)
    layers = {layer.digest for layer in image.layers}
    _wait("layers discarded", lambda: not (layers & n3.containerd.blob_digests()))

    def consistent() -> bool:
        # Every digest advertised is one on disk; the discarded layers are not among them.
        on_disk = n3.containerd.blob_digests()
        return bool(n3.stats()["counts"]["digests"] == len(on_disk))

    # Usually the re-walk after the image event; when GC comes later than that (a
    # loaded machine), the audit, which goes over every advertised digest each minute.
    _wait("advertised digests match the content store", consistent, timeout=75.0)
    ns = f"?ns={cluster.upstream.host}"
    for layer in sorted(layers):
        # Node 1 never had them: its lookups must find no provider (node 3 withdrew).
        reply = fetch(
            cluster.nodes[0].mirror.address, f"/v2/{image.name}/blobs/{layer}{ns}", method="HEAD"
        )
        assert reply.status == 404


def test_the_mirror_warns_about_the_node_that_discards_layers(cluster: Cluster) -> None:
    """Each mirror reads its node's config.toml (version 3 on 2.x) at start: only node 3,
    with discard_unpacked_layers = true, is warned about."""
    for i, node in enumerate(cluster.nodes, start=1):
        lines = node.mirror.process.log_path.read_text().splitlines()
        warnings = [json.loads(line)["msg"] for line in lines if '"level": "WARN' in line]
        # These mirrors share no cluster key: that warning is not this test's.
        warnings = [w for w in warnings if not w.startswith("the DHT is unauthenticated")]
        expected = ["discard_unpacked_layers = true"] if i == 3 else []
        assert [w.split(":")[0] for w in warnings] == expected, warnings


def test_content_create_is_advertised_on_commit(cluster: Cluster) -> None:
    """2.x publishes /content/create: a blob no image names yet is provided at once."""
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    data = f"loose blob for {cluster.series}".encode() * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    subprocess.run(
        [
            n1.containerd.ctr_binary,
            "--address",
            str(n1.containerd.address),
            "--namespace",
            n1.containerd.namespace,
            "content",
            "ingest",
            f"--expected-digest={digest}",
            f"--expected-size={len(data)}",
            f"loose-{cluster.series}",
        ],
        input=data,
        check=True,
        timeout=30,
        capture_output=True,
    )
    assert n1.containerd.has_blob(digest)
    path = f"/v2/library/loose/blobs/{digest}?ns={cluster.upstream.host}"
    if cluster.series.startswith("1."):
        # 1.x publishes no /content/create: nothing names the blob, nothing is advertised.
        time.sleep(1.0)
        assert fetch(n2.mirror.address, path, method="HEAD").status == 404
        return
    _wait("loose blob through a peer", lambda: _served_by_peer(n2, path), timeout=5.0)
    reply = fetch(n2.mirror.address, path)
    assert reply.status == 200 and reply.sha256() == digest
