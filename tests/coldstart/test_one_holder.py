"""One node holds an image, nine pull it at once with the upstream gone: the holder is not
the whole cluster's uplink. Its stream cap sends the later peers to those already
receiving, which serve the layer on while it arrives."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import pytest

from bench.kit.cluster import LocalCluster
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.metrics import metric_sum
from tests.httpclient import fetch

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
NODES = 10
UPLINK = 25_000_000  # bytes/s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Each node's uplink to its peers is capped, as real NICs are: with loopback
    # unlimited, the first holder would finish each stream before the next asks.
    with LocalCluster(
        NODES,
        tmp_path_factory.mktemp("holder"),
        log_level="INFO",
        mirror_args=[f"--peer-upload-rate={UPLINK}"],
    ) as running:
        yield running


def _served(cluster: LocalCluster, node: int) -> float:
    url = cluster[node].mirror.metrics_url
    return sum(
        metric_sum(url, "mirror_served_bytes_total", source=source)
        for source in ("local", "inflight")
    )


def _wait_advertised(cluster: LocalCluster, image: GeneratedImage, timeout: float = 30) -> None:
    """Until every puller finds the holder for the tag and every blob. The upstream is
    stopped next, so a lookup outlasting the 20 ms resolve timeout on this loaded
    machine (ten nodes on two cores) would fail a pull: not what this test is about."""
    deadline = time.monotonic() + timeout
    ns = f"?ns={cluster.upstream.host}"
    paths = [f"/v2/{image.name}/manifests/{image.tag}{ns}"] + [
        f"/v2/{image.name}/{'manifests' if b.digest == image.digest else 'blobs'}/{b.digest}{ns}"
        for b in image.images[0].blobs()
    ]
    for node in cluster.nodes[1:]:
        for path in paths:
            while fetch(node.mirror.address, path, method="HEAD").status != 200:
                assert time.monotonic() < deadline, f"{path} never found by {node.name}"
                time.sleep(0.1)


def test_nine_pulls_from_one_holder_spread_over_the_pullers(cluster: LocalCluster) -> None:
    image = generate_image(
        cluster.base_dir / "layouts" / "spread",
        name="cold/spread",
        tag="v1",
        seed=5,
        total_size=48 * MIB,
        layers=3,
    )
    ref = image.ref(cluster.upstream.host)
    push_image(image.layout_dir, image.tag, ref)
    cluster.pull(0, ref)
    _wait_advertised(cluster, image)
    cluster.upstream.stop()
    errors: list[BaseException] = []
    before = _served(cluster, 0)

    def pull(i: int) -> None:
        try:
            cluster.pull(i, ref)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=pull, args=(i,)) for i in range(1, NODES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    finally:
        cluster.upstream.start()
    for error in errors:
        print(error)  # in full: the assertion's repr is cut short
    assert not errors, errors
    for node in cluster.nodes[1:]:
        for layer in image.layers:
            data = node.containerd.blob_path(layer.digest).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
    layer_bytes = sum(layer.size for layer in image.layers) * (NODES - 1)
    holder_share = (_served(cluster, 0) - before) / layer_bytes
    assert holder_share <= 0.5, f"the holder sent {holder_share:.0%} of the layer bytes"
