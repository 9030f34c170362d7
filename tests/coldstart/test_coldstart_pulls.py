"""P2P from the first byte on a real cluster: 5 containerd daemons pull a new image at once.

On containerd 1.6, 1.7 and 2.1. The upstream sits behind the shaping relay (so a
layer takes a while to arrive) with its access log on: each layer must be sent by
the upstream once for the whole cluster, and every node must end with every blob
intact.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness.localcluster import BenchCluster
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.metrics import metric_sum
from bench.kit.wan import MB, LinkSpec

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
NODES = 5


@pytest.fixture(scope="module", params=["1.6", "1.7", "2.1"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BenchCluster]:
    series = str(request.param)
    base = tmp_path_factory.mktemp(f"coldstart{series}")
    with BenchCluster(
        NODES,
        base,
        LinkSpec(rate=100 * MB, rtt=0.020),
        log_level="DEBUG",
        access_log=True,
        containerd_series=series,
    ) as running:
        yield running


def _image(cluster: BenchCluster, name: str, seed: int, size: int, layers: int) -> GeneratedImage:
    image = generate_image(
        cluster.base_dir / "layouts" / name,
        name=f"cold/{name}",
        tag="v1",
        seed=seed,
        total_size=size,
        layers=layers,
    )
    push_image(image.layout_dir, image.tag, image.ref(cluster.upstream.direct_host))
    return image


def _pull_all(cluster: BenchCluster, ref: str, delays: list[float]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = time.monotonic()

    def pull(i: int) -> None:
        time.sleep(max(0.0, start + delays[i] - time.monotonic()))
        try:
            cluster.pull(i, ref)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(len(delays))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return errors


def _assert_every_node_holds(cluster: BenchCluster, image: GeneratedImage) -> None:
    for node in cluster.nodes:
        for blob in image.images[0].blobs():
            path: Path = node.containerd.blob_path(blob.digest)
            assert path.is_file(), f"{blob.digest} missing on {node.name}"
            digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == blob.digest, f"{blob.digest} corrupt on {node.name}"


def _metric_sum(cluster: BenchCluster, name: str, **labels: str) -> float:
    return sum(metric_sum(node.mirror.metrics_url, name, **labels) for node in cluster.nodes)


def _upstream_layer_gets(cluster: BenchCluster, image: GeneratedImage) -> Counter[str]:
    wanted = {layer.digest for layer in image.layers}
    return Counter(
        digest
        for digest, status in cluster.upstream.blob_gets()
        if digest in wanted and status in (200, 206)
    )


@pytest.mark.parametrize(
    ("name", "delays"),
    [("together", [0.0] * NODES), ("staggered", [0.0, 0.1, 0.35, 0.6, 1.0])],
)
def test_each_layer_comes_from_the_upstream_once(
    cluster: BenchCluster, name: str, delays: list[float]
) -> None:
    image = _image(cluster, name, seed=len(name), size=24 * MIB, layers=3)
    before = cluster.upstream.served_bytes()
    errors = _pull_all(cluster, image.ref(cluster.upstream.host), delays)
    assert not errors, errors
    _assert_every_node_holds(cluster, image)
    gets = _upstream_layer_gets(cluster, image)
    # Without the mirror: NODES fetches per layer.
    assert gets == Counter({layer.digest: 1 for layer in image.layers}), gets
    layer_bytes = sum(layer.size for layer in image.layers)
    sent = cluster.upstream.served_bytes() - before
    # Manifests and configs still come from the upstream on every node (small).
    assert sent < layer_bytes * 1.1 + NODES * MIB, (sent, layer_bytes)
    if name == "together":
        # Every layer claimed (and fetched) once; the other nodes streamed downloads
        # in progress, and their metrics say so.
        won = _metric_sum(cluster, "mirror_coldstart_claims_total", outcome="won")
        assert len(image.layers) <= won <= len(image.layers) + 2  # + the config blob
        assert _metric_sum(cluster, "mirror_served_bytes_total", source="inflight") > 0
