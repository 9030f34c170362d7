"""Faults during a cold start on a real 4-node cluster, the upstream behind a slow link.

The claimant (the node fetching a layer from the upstream for the cluster) is hit
while its download is under way: its mirror killed, or its pull killed. Every
other node's pull completes with the right bytes, and the upstream sends the
layer at most twice (the one fetch, plus the rest after the fault).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from bench.harness.localcluster import BenchCluster
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.metrics import metric_sum
from bench.kit.wan import MB, LinkSpec

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
NODES = 4
LAYER = 24 * MIB


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchCluster]:
    base = tmp_path_factory.mktemp("faults")
    # 16 MB/s: the layer takes about 1.6 s to come from the upstream.
    with BenchCluster(
        NODES, base, LinkSpec(rate=16 * MB, rtt=0.010), log_level="DEBUG", access_log=True
    ) as running:
        yield running


def _image(cluster: BenchCluster, name: str, seed: int) -> GeneratedImage:
    image = generate_image(
        cluster.base_dir / "layouts" / name,
        name=f"faults/{name}",
        tag="v1",
        seed=seed,
        total_size=LAYER,
        layers=1,
    )
    push_image(image.layout_dir, image.tag, image.ref(cluster.upstream.direct_host))
    return image


def _claims_held(cluster: BenchCluster, node: int) -> float:
    try:
        return metric_sum(cluster[node].mirror.metrics_url, "mirror_coldstart_claims_held")
    except OSError:  # a node being killed or restarted
        return 0.0


def _ingested(cluster: BenchCluster, node: int) -> int:
    ingest = cluster[node].containerd.content_path / "ingest"
    return sum(p.stat().st_size for p in ingest.glob("*/data")) if ingest.is_dir() else 0


def _claimant_midway(cluster: BenchCluster, layer: int, timeout: float = 30.0) -> int:
    """The node holding the layer's claim, once a sixth of the layer is on its disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i in range(NODES):
            if _claims_held(cluster, i) >= 1 and _ingested(cluster, i) >= layer // 6:
                return i
        time.sleep(0.02)
    raise AssertionError("no claimant with a download under way")


def _ctr_pull(cluster: BenchCluster, node: int, ref: str) -> subprocess.Popen[bytes]:
    name = ref.rsplit("/", 1)[-1].replace(":", "-")
    return cluster[node].containerd.start_pull(ref, cluster.base_dir / f"ctr-{name}-{node + 1}.log")


def _assert_holds(cluster: BenchCluster, nodes: list[int], image: GeneratedImage) -> None:
    layer = image.layers[0]
    for i in nodes:
        data = cluster[i].containerd.blob_path(layer.digest).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest, f"node {i + 1}"


def _upstream_gets(cluster: BenchCluster, image: GeneratedImage) -> int:
    digest = image.layers[0].digest
    return Counter(d for d, status in cluster.upstream.blob_gets() if status in (200, 206))[digest]


def test_the_claimants_mirror_killed_midway(cluster: BenchCluster) -> None:
    image = _image(cluster, "mirror-killed", seed=31)
    ref = image.ref(cluster.upstream.host)
    pulls = {i: _ctr_pull(cluster, i, ref) for i in range(NODES)}
    victim = _claimant_midway(cluster, LAYER)
    cluster[victim].mirror.process.stop(timeout=0)  # SIGKILL at once
    try:
        others = [i for i in range(NODES) if i != victim]
        for i in others:
            assert pulls[i].wait(180) == 0, f"node {i + 1}'s pull failed"
        pulls[victim].wait(180)  # its containerd went on from the upstream
        _assert_holds(cluster, others, image)
        assert _upstream_gets(cluster, image) <= 2
    finally:
        cluster[victim].mirror.start()


def test_the_claimants_pull_killed_midway(cluster: BenchCluster) -> None:
    image = _image(cluster, "pull-killed", seed=32)
    ref = image.ref(cluster.upstream.host)
    pulls = {i: _ctr_pull(cluster, i, ref) for i in range(NODES)}
    victim = _claimant_midway(cluster, LAYER)
    pulls[victim].kill()  # its download stops growing, then is left behind
    pulls[victim].wait(10)
    others = [i for i in range(NODES) if i != victim]
    for i in others:
        assert pulls[i].wait(180) == 0, f"node {i + 1}'s pull failed"
    _assert_holds(cluster, others, image)
    assert _upstream_gets(cluster, image) <= 2


def test_the_claimants_containerd_killed_midway(cluster: BenchCluster) -> None:
    image = _image(cluster, "containerd-killed", seed=33)
    ref = image.ref(cluster.upstream.host)
    pulls = {i: _ctr_pull(cluster, i, ref) for i in range(NODES)}
    victim = _claimant_midway(cluster, LAYER)
    containerd = cluster[victim].containerd
    containerd.stop(timeout=0)  # SIGKILL: its download stops where it is
    try:
        pulls[victim].wait(30)  # its ctr fails with the daemon gone
        others = [i for i in range(NODES) if i != victim]
        for i in others:
            assert pulls[i].wait(180) == 0, f"node {i + 1}'s pull failed"
        _assert_holds(cluster, others, image)
        assert _upstream_gets(cluster, image) <= 2
    finally:
        containerd.start()


def test_the_claimants_download_truncated_midway(cluster: BenchCluster) -> None:
    """Someone truncates the claimant's ingest `data` to nothing while its containerd
    writes: the peers streaming it are reset (never given a clean end), take another
    source or the upstream, and end with the right bytes. (The claimant's containerd
    goes on writing at its offset; what it commits is its own affair, and its
    mirror proves a blob before serving it to a peer.)"""
    image = _image(cluster, "truncated", seed=34)
    ref = image.ref(cluster.upstream.host)
    pulls = {i: _ctr_pull(cluster, i, ref) for i in range(NODES)}
    victim = _claimant_midway(cluster, LAYER)
    for data in (cluster[victim].containerd.content_path / "ingest").glob("*/data"):
        os.truncate(data, 0)
    others = [i for i in range(NODES) if i != victim]
    for i in others:
        assert pulls[i].wait(180) == 0, f"node {i + 1}'s pull failed"
    pulls[victim].wait(180)
    _assert_holds(cluster, others, image)
    assert _upstream_gets(cluster, image) <= 2


def _claims(cluster: BenchCluster, node: int, outcome: str) -> float:
    url = cluster[node].mirror.metrics_url
    return metric_sum(url, "mirror_coldstart_claims_total", outcome=outcome)


def test_a_claimant_whose_committed_blob_is_wrong_lets_the_next_node_claim(
    cluster: BenchCluster,
) -> None:
    """A node that fetched a layer for the cluster keeps its claim past the commit
    (late claimants are sent to its copy). If that blob is then damaged on disk, it
    fails its proof when a peer asks, and the claim is released: the next node wins
    the claim and its containerd fetches the layer, instead of losing every claim
    to a node that cannot serve it until its wait budget runs out ("timeout")."""
    image = _image(cluster, "wrong-after-commit", seed=35)
    ref = image.ref(cluster.upstream.host)
    first, second = 0, 1
    assert _ctr_pull(cluster, first, ref).wait(180) == 0
    layer = cluster[first].containerd.blob_path(image.layers[0].digest)
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    won, timeouts = _claims(cluster, second, "won"), _claims(cluster, second, "timeout")
    assert _ctr_pull(cluster, second, ref).wait(180) == 0
    _assert_holds(cluster, [second], image)
    assert _claims(cluster, second, "timeout") == timeouts
    assert _claims(cluster, second, "won") == won + 1
    assert _upstream_gets(cluster, image) == 2
