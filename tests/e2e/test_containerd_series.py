"""The `ctr pull --hosts-dir` cluster on every containerd series (1.6, 1.7, 2.1), focused.

The full e2e set runs on 1.6 (test_p2p.py); here each series gets the paths that
depend on containerd's side: a multi-arch image as registries serve them (gzip
and zstd layers of real files, symlinks, hardlinks, whiteouts; an attestation
manifest per platform) pulled through a peer with the upstream stopped and
unpacked, only the pulled platform's layers advertised, a holder killed while a
real pull streams a layer from it, and (2.1) a layer fetched in parallel ranges.
The holders' peer uploads are paced (--peer-upload-rate) so that a layer takes
long enough to be cut midway.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator

import pytest

from bench.kit.cluster import LocalCluster
from bench.kit.dhtprobe import providers_of
from bench.kit.images import Blob, GeneratedImage, PlatformImage, generate_image, push_image
from bench.kit.layers import is_whiteout_device, tree_view
from bench.kit.metrics import metric_sum
from bench.kit.procs import KitError
from dht import load_cluster_key
from tests.httpclient import fetch

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
# Peer uploads per node: a 24 MiB layer takes about 0.75 s from one holder.
UPLOAD_RATE = 32 * MIB
MIRRORED = {"X-Spegel-Mirrored": "true"}


@pytest.fixture(scope="module", params=["1.6", "1.7", "2.1"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    series = str(request.param)
    with LocalCluster(
        3,
        tmp_path_factory.mktemp(f"series{series}"),
        log_level="INFO",
        containerd_series=series,
        mirror_args=[f"--peer-upload-rate={UPLOAD_RATE}"],
    ) as running:
        yield running


@pytest.fixture(scope="module")
def multi_arch(cluster: LocalCluster) -> GeneratedImage:
    """Pushed upstream and pulled for linux/amd64 on node 1."""
    image = generate_image(
        cluster.base_dir / "layouts" / "real",
        name="real/app",
        tag="v1",
        seed=21,
        total_size=6 * MIB,
        layers=3,
        files_per_layer=3,
        multi_arch=True,
        compression=("gzip", "zstd"),
        content="tree",
        attestations=True,
    )
    push_image(image.layout_dir, image.tag, image.ref(cluster.upstream.host))
    cluster.pull(0, image.ref(cluster.upstream.host), platform="linux/amd64")
    return image


def _ns(cluster: LocalCluster) -> str:
    return f"?ns={cluster.upstream.host}"


def _key(cluster: LocalCluster) -> bytes | None:
    """The cluster's DHT key: the probe asks as a member would."""
    return None if cluster.router_key is None else load_cluster_key(cluster.router_key)


def _wait_served_by_peer(cluster: LocalCluster, node: int, path: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        reply = fetch(cluster[node].mirror.address, path, method="HEAD")
        if reply.status == 200 and reply.header("X-Mirror-Peer"):
            return
        assert time.monotonic() < deadline, f"{path} not served through a peer of node {node + 1}"
        time.sleep(0.1)


def _wait_advertised(
    cluster: LocalCluster, node: int, image: GeneratedImage, amd64: PlatformImage
) -> None:
    _wait_served_by_peer(cluster, node, f"/v2/{image.name}/manifests/{image.tag}{_ns(cluster)}")
    for blob in (image.top, *amd64.blobs()):
        section = "manifests" if blob in (image.top, amd64.manifest) else "blobs"
        _wait_served_by_peer(
            cluster, node, f"/v2/{image.name}/{section}/{blob.digest}{_ns(cluster)}"
        )


def _wait_provided_by(
    cluster: LocalCluster, image: GeneratedImage, holders: tuple[int, ...], timeout: float = 20
) -> None:
    """Until the DHT lists each of `holders` for the image's tag and every blob."""
    routers = [f"{node.mirror.host}:{node.mirror.router_port}" for node in cluster.nodes]
    keys = [image.ref(cluster.upstream.host), *(blob.digest for blob in image.blobs())]
    wanted = {cluster[i].mirror.address for i in holders}
    deadline = time.monotonic() + timeout
    while True:
        found = providers_of(routers, keys, cluster_key=_key(cluster))
        if all(wanted <= found[key] for key in keys):
            return
        assert time.monotonic() < deadline, f"not provided by {wanted}: {found}"
        time.sleep(0.2)


def _assert_blobs_match(cluster: LocalCluster, node: int, blobs: tuple[Blob, ...]) -> None:
    containerd = cluster[node].containerd
    for blob in blobs:
        path = containerd.blob_path(blob.digest)
        assert path.is_file(), f"{blob.digest} missing on node {node + 1}"
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == blob.digest


def _assert_unpacked(cluster: LocalCluster, node: int, amd64: PlatformImage) -> None:
    """The image as a container would see it: every layer applied, whiteouts included."""
    view = tree_view(len(amd64.layers))
    with cluster[node].containerd.snapshot_view(amd64.chain_id) as root:
        for path in view.files:
            assert (root / path).is_file(), path
        for path, target in view.symlinks.items():
            assert os.readlink(root / path) == target, path
        for path, other in view.hardlinks.items():
            assert (root / path).stat().st_ino == (root / other).stat().st_ino, path
        for path in view.absent:
            assert not os.path.lexists(root / path), f"{path} survived its whiteout"
        assert (root / "layer-0/share/doc/README").read_text().startswith("layer 0 of")
    # The first layer whiteout is unpacked as overlayfs's own (a 0/0 device) in layer 1.
    snapshots = cluster[node].containerd.root / "io.containerd.snapshotter.v1.overlayfs"
    whiteouts = list(snapshots.glob("snapshots/*/fs/layer-0/gone.txt"))
    assert any(is_whiteout_device(path) for path in whiteouts), whiteouts


def test_a_multi_arch_image_of_compressed_layers_is_pulled_through_peers(
    cluster: LocalCluster, multi_arch: GeneratedImage
) -> None:
    amd64 = multi_arch.platform("linux/amd64")
    assert {layer.media_type.rsplit("+", 1)[-1] for layer in amd64.layers} == {"gzip", "zstd"}
    _wait_advertised(cluster, 1, multi_arch, amd64)
    _wait_advertised(cluster, 2, multi_arch, amd64)
    ref = multi_arch.ref(cluster.upstream.host)
    cluster.upstream.stop()
    try:
        cluster.pull(1, ref, platform="linux/amd64")
        by_digest = f"{cluster.upstream.host}/{multi_arch.name}@{multi_arch.digest}"
        cluster.pull(2, by_digest, platform="linux/amd64")
    finally:
        cluster.upstream.start()
    for node in (1, 2):
        _assert_blobs_match(cluster, node, (multi_arch.top, *amd64.blobs()))
        _assert_unpacked(cluster, node, amd64)


def test_only_the_pulled_platform_is_advertised(
    cluster: LocalCluster, multi_arch: GeneratedImage
) -> None:
    amd64, arm64 = multi_arch.platform("linux/amd64"), multi_arch.platform("linux/arm64")
    if not cluster[1].containerd.has_blob(multi_arch.digest):  # else it came through a peer
        _wait_advertised(cluster, 1, multi_arch, amd64)
    holder = cluster[0]
    # The holder never fetched the other platform's layers (containerd 2.x does fetch
    # every platform's manifest and config, and those it serves and advertises).
    assert not any(holder.containerd.has_blob(layer.digest) for layer in arm64.layers)
    routers = [f"{node.mirror.host}:{node.mirror.router_port}" for node in cluster.nodes]
    layers = [layer.digest for layer in (*amd64.layers, *arm64.layers)]
    found = providers_of(routers, layers, cluster_key=_key(cluster))
    for layer in amd64.layers:
        assert holder.mirror.address in found[layer.digest]
    assert all(not found[layer.digest] for layer in arm64.layers), found
    for layer in arm64.layers:
        path = f"/v2/{multi_arch.name}/blobs/{layer.digest}{_ns(cluster)}"
        # A peer's request: the holder serves only what it has.
        reply = fetch(holder.mirror.address, path, method="GET", headers=MIRRORED)
        assert reply.status == 404 and reply.error_code() == "BLOB_UNKNOWN"
        # containerd's request on another node: nobody provides it, a miss.
        reply = fetch(cluster[1].mirror.address, path, method="HEAD")
        assert reply.status == 404 and not reply.header("X-Mirror-Peer")


def _streaming_holder(cluster: LocalCluster, puller: threading.Thread) -> int | None:
    """The holder answering a blob GET in two polls 0.1 s apart: the layer (at
    UPLOAD_RATE it takes 0.75 s; the manifest and config take milliseconds)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while puller.is_alive() and time.monotonic() < deadline:
        busy = {
            i
            for i in (0, 2)
            if metric_sum(cluster[i].mirror.metrics_url, "http_requests_inflight", handler="blob")
        }
        if busy & seen:
            return min(busy & seen)
        seen = busy
        time.sleep(0.1)
    return None


def test_a_holder_killed_mid_layer_during_a_pull_is_replaced(cluster: LocalCluster) -> None:
    image = generate_image(
        cluster.base_dir / "layouts" / "fault",
        name="real/fault",
        tag="v1",
        seed=22,
        total_size=24 * MIB,
        layers=1,
        compression="gzip",
    )
    ref = image.ref(cluster.upstream.host)
    push_image(image.layout_dir, image.tag, ref)
    cluster.pull(0, ref)
    cluster.pull(2, ref)
    _wait_provided_by(cluster, image, (0, 2))
    resumes = metric_sum(cluster[1].mirror.metrics_url, "mirror_relay_resumes_total")
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            cluster.pull(1, ref)
        except (KitError, OSError) as exc:
            errors.append(exc)

    cluster.upstream.stop()
    puller = threading.Thread(target=pull)
    victim = None
    try:
        puller.start()
        victim = _streaming_holder(cluster, puller)
        assert victim is not None, f"no holder was seen streaming the layer: {errors}"
        cluster[victim].mirror.process.stop(timeout=0)  # SIGKILL: a node dying
        puller.join(120)
    finally:
        cluster.upstream.start()
        if victim is not None:
            cluster[victim].mirror.start()
    assert not puller.is_alive() and not errors, errors
    _assert_blobs_match(cluster, 1, image.images[0].blobs())
    # The relay went on from the other holder with Range; containerd saw one response.
    assert metric_sum(cluster[1].mirror.metrics_url, "mirror_relay_resumes_total") > resumes


def test_parallel_range_fetches_go_through_peers(cluster: LocalCluster) -> None:
    """containerd 2.1's transfer service with concurrent_layer_fetch_buffer fetches a layer
    as parallel open-ended ranges (`bytes=N-`), reading one buffer of each: every range
    is relayed from a peer, and containerd proves the whole at commit."""
    if cluster.containerd_series != "2.1":
        pytest.skip("parallel layer fetches are containerd 2.1's")
    image = generate_image(
        cluster.base_dir / "layouts" / "ranges",
        name="real/ranges",
        tag="v1",
        seed=23,
        total_size=8 * MIB,
        layers=1,
    )
    ref = image.ref(cluster.upstream.host)
    push_image(image.layout_dir, image.tag, ref)
    cluster.pull(0, ref)
    _wait_provided_by(cluster, image, (0,))
    puller = cluster[1]
    puller.containerd.layer_fetch_buffer = MIB
    puller.containerd.restart()
    gets = metric_sum(puller.mirror.metrics_url, "http_response_size_bytes_count", handler="blob")
    cluster.upstream.stop()
    try:
        cluster.pull(1, ref)
    finally:
        cluster.upstream.start()
        puller.containerd.layer_fetch_buffer = 0
        puller.containerd.restart()
    _assert_blobs_match(cluster, 1, image.images[0].blobs())
    after = metric_sum(puller.mirror.metrics_url, "http_response_size_bytes_count", handler="blob")
    assert after - gets >= 8  # one request per MiB of the layer, and the config
