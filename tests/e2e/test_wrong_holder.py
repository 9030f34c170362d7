"""A holder whose content store was altered on disk (the manifest and the largest
layer, sizes unchanged) never gets a wrong byte into another node's image. The
holder proves a blob before it first serves it to a peer, so the first pull
succeeds from the upstream; bytes altered past that proof (the mtime put back)
are caught by the puller's relay before the end, the source dropped for that
digest and the poisoned download aborted in containerd, so only that one pull
fails and the next succeeds without cleanup. Real containerd, registry, `ctr`."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.kit.cluster import LocalCluster
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.metrics import metric_sum
from bench.kit.procs import KitError
from tests.httpclient import fetch

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


@pytest.fixture(scope="module", params=["1.6", "2.1"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    series = str(request.param)
    with LocalCluster(
        2, tmp_path_factory.mktemp(f"wrong{series}"), log_level="INFO", containerd_series=series
    ) as running:
        yield running


def _alter(path: Path) -> None:
    """Flip one byte in the middle, keeping the size (and bumping the mtime)."""
    os.chmod(path, 0o644)
    with path.open("r+b") as file:
        file.seek(path.stat().st_size // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))


def _wait_advertised(cluster: LocalCluster, image: GeneratedImage, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    for layer in image.layers:
        target = f"/v2/{image.name}/blobs/{layer.digest}?ns={cluster.upstream.host}"
        while fetch(cluster[1].mirror.address, target, method="HEAD").status != 200:
            assert time.monotonic() < deadline, f"{layer.digest} never advertised"
            time.sleep(0.1)


def _image(cluster: LocalCluster, name: str, seed: int) -> GeneratedImage:
    image = generate_image(
        cluster.base_dir / "layouts" / name,
        name=f"hostile/{name}",
        tag="v1",
        seed=seed,
        total_size=24 * MIB,
        layers=3,
    )
    push_image(image.layout_dir, image.tag, image.ref(cluster.upstream.host))
    return image


def _pull_until_it_succeeds(cluster: LocalCluster, ref: str) -> list[str]:
    """Node 1 pulls; the failures before a success (two in a row fail the test)."""
    failures: list[str] = []
    for _ in range(2):
        try:
            cluster.pull(1, ref)
            return failures
        except KitError as exc:
            failures.append(str(exc))
    pytest.fail("two pulls in a row failed:\n" + "\n\n".join(failures))


def _assert_pulled_right(cluster: LocalCluster, image: GeneratedImage) -> None:
    puller = cluster[1].containerd
    for blob in image.images[0].blobs():
        data = puller.blob_path(blob.digest).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest


def test_a_holder_with_altered_content_serves_none_of_it(cluster: LocalCluster) -> None:
    image = _image(cluster, "altered", seed=12)
    ref = image.ref(cluster.upstream.host)
    cluster.pull(0, ref)
    _wait_advertised(cluster, image)
    holder = cluster[0].containerd
    largest = max(image.layers, key=lambda layer: layer.size)
    _alter(holder.blob_path(image.digest))
    _alter(holder.blob_path(largest.digest))
    # The holder proves a blob before it first serves it to a peer: the altered ones
    # are refused, the puller's mirror goes to the upstream, the first pull succeeds.
    assert _pull_until_it_succeeds(cluster, ref) == []
    _assert_pulled_right(cluster, image)


def test_wrong_bytes_past_the_holders_proof_fail_one_pull_not_every_pull(
    cluster: LocalCluster,
) -> None:
    """The layer altered after the holder proved it, its mtime put back: the holder
    serves it, the puller's relay finds it wrong before its end."""
    image = _image(cluster, "behind", seed=13)
    ref = image.ref(cluster.upstream.host)
    cluster.pull(0, ref)
    _wait_advertised(cluster, image)
    largest = max(image.layers, key=lambda layer: layer.size)
    cluster.pull(1, ref)  # the holder proves what it serves
    cluster[1].containerd.remove_image(ref)
    path = cluster[0].containerd.blob_path(largest.digest)
    times = path.stat()
    _alter(path)
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))

    failures = _pull_until_it_succeeds(cluster, ref)
    print(f"pulls that failed before one succeeded: {len(failures)}")
    _assert_pulled_right(cluster, image)
    url = cluster[1].mirror.metrics_url
    assert metric_sum(url, "mirror_relay_digest_mismatch_total") >= 1
