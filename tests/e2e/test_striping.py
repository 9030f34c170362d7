"""Striping on a real 4-node cluster: a ctr pull of a large layer held by three nodes
reads from all three at once through its mirror, and goes on when one of them is
SIGKILLed mid-body."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from bench.kit.cluster import LocalCluster
from bench.kit.metrics import metric_sum
from tests.e2e.test_p2p import MIB, _assert_blobs_match, _image, _wait_served_by_peer
from tests.e2e.test_redirect import _streaming

pytestmark = pytest.mark.integration

PULLER = 3
HOLDERS = (0, 1, 2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Every node sends peers 20 MB/s at most: a 96 MiB layer takes about 1.7 s from
    # three holders, time enough to kill one midway.
    args = ["--peer-upload-rate=20000000"]
    with LocalCluster(4, tmp_path_factory.mktemp("striping"), mirror_args=args) as running:
        yield running


def _striped(cluster: LocalCluster, outcome: str) -> float:
    return metric_sum(
        cluster[PULLER].mirror.metrics_url, "mirror_striped_bodies_total", outcome=outcome
    )


def test_a_holder_killed_mid_body_leaves_the_others_to_finish(cluster: LocalCluster) -> None:
    image = _image(cluster, "striped", seed=51, size=96 * MIB, layers=1)
    ref = image.ref(cluster.upstream.host)
    for holder in HOLDERS:
        cluster.pull(holder, ref, unpack=False)
    layer = image.layers[0].digest
    _wait_served_by_peer(
        cluster, PULLER, f"/v2/{image.name}/blobs/{layer}?ns={cluster.upstream.host}"
    )
    time.sleep(1.0)  # every holder's record is in the DHT
    cluster.upstream.stop()
    pull = cluster[PULLER].containerd.start_pull(ref)
    victim = None
    try:
        deadline = time.monotonic() + 30
        streaming: set[int] = set()
        while len(streaming) < 3 and time.monotonic() < deadline:
            streaming |= {i for i in HOLDERS if _streaming(cluster, i) >= 1}
            time.sleep(0.02)
        # Striped: every holder sent ranges of the one layer.
        assert len(streaming) == 3, f"holders seen streaming: {streaming}"
        time.sleep(0.4)
        victim = min(streaming)
        cluster[victim].mirror.process.stop(timeout=0)  # SIGKILL mid-body
        _, stderr = pull.communicate(timeout=120)
        assert pull.returncode == 0, stderr.decode()
        _assert_blobs_match(cluster, PULLER, image)
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait()
        if victim is not None:
            cluster[victim].mirror.start()
        cluster.upstream.start()
    # One body, whole and proven: the killed holder's ranges went to the two others
    # (containerd did not have to come back for the rest).
    assert _striped(cluster, "peer") == 1
    lines = [
        json.loads(line)
        for line in cluster[PULLER].mirror.process.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    [sent_on] = [
        line
        for line in lines
        if line["msg"] == "mirrored" and line["key"] == layer and line["method"] == "GET"
    ]
    assert sent_on["outcome"] == "peer" and sent_on["striped"] == 3 and sent_on["resumes"] >= 1
    # A holder still sending another body (a race's loser, until it sees the close)
    # says busy to a spare-only range and is asked again later: set aside, not failed.
    dropped = [
        line
        for line in lines
        if line["msg"] == "striped fetch dropped a holder" and line["reason"] != "busy"
    ]
    assert [line["peer"].rsplit(":", 1)[0] for line in dropped] == [f"127.0.0.{victim + 1}"]
    assert dropped[0]["reason"].startswith("failed")
