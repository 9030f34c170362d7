"""`--mirror-relay=redirect` on a real 3-node cluster: containerd follows the 307 to a
holder and reads the blob from its sendfile; a holder killed mid-body is replaced
when containerd comes back at its offset."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bench.kit.cluster import LocalCluster
from bench.kit.metrics import metric_sum
from tests.e2e.test_p2p import MIB, _assert_blobs_match, _image, _wait_served_by_peer
from tests.httpclient import fetch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Paced uploads to peers (what a redirected client is): a 48 MiB layer takes
    # about 2 s, time enough to kill its holder midway.
    args = ["--mirror-relay=redirect", "--peer-upload-rate=25000000"]
    with LocalCluster(3, tmp_path_factory.mktemp("redirect"), mirror_args=args) as running:
        yield running


def test_a_pull_through_the_mirror_reads_from_the_holder(cluster: LocalCluster) -> None:
    image = _image(cluster, "redirected", seed=41, size=12 * MIB, layers=2)
    ref = image.ref(cluster.upstream.host)
    cluster.pull(0, ref)
    ns = f"?ns={cluster.upstream.host}"
    layer = image.layers[0]
    path = f"/v2/{image.name}/blobs/{layer.digest}{ns}"
    _wait_served_by_peer(cluster, 1, path)
    reply = fetch(cluster[1].mirror.address, path)
    assert reply.status == 307
    assert reply.header("Location") == f"{cluster[0].mirror.url}{path}&mirrored=true"
    cluster.upstream.stop()
    try:
        cluster.pull(1, ref)
        _assert_blobs_match(cluster, 1, image)
    finally:
        cluster.upstream.start()


def _streaming(cluster: LocalCluster, node: int) -> float:
    try:
        return metric_sum(cluster[node].mirror.metrics_url, "mirror_peer_streams")
    except OSError:
        return 0.0


def test_a_holder_killed_mid_body_is_replaced(cluster: LocalCluster) -> None:
    image = _image(cluster, "killed", seed=42, size=48 * MIB, layers=1)
    ref = image.ref(cluster.upstream.host)
    cluster.pull(0, ref)
    cluster.pull(2, ref)
    ns = f"?ns={cluster.upstream.host}"
    _wait_served_by_peer(cluster, 1, f"/v2/{image.name}/blobs/{image.layers[0].digest}{ns}")
    cluster.upstream.stop()
    pull = cluster[1].containerd.start_pull(ref)
    victim = None
    try:
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            victim = next((i for i in (0, 2) if _streaming(cluster, i) >= 1), None)
            time.sleep(0.05)
        assert victim is not None, "no holder was streaming the layer"
        time.sleep(0.5)
        cluster[victim].mirror.process.stop(timeout=0)  # SIGKILL mid-body
        _, stderr = pull.communicate(timeout=120)
        assert pull.returncode == 0, stderr.decode()
        _assert_blobs_match(cluster, 1, image)
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait()
        if victim is not None:
            cluster[victim].mirror.start()
        cluster.upstream.start()
    # containerd came back at its offset: node 2's mirror sent it on (again) after the kill.
    layer = image.layers[0].digest
    sent_on = [
        line
        for line in cluster[1].mirror.process.log_path.read_text().splitlines()
        if '"msg": "mirrored"' in line and layer in line and '"method": "GET"' in line
    ]
    assert len(sent_on) >= 2, sent_on
