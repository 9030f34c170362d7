"""Basic auth on the registry port (Spegel's `basicAuthSecretName`), on a real 2-node cluster.

Each real `mirror registry` reads the Secret's files; `mirror configuration` writes
the header into hosts.toml; a real `ctr pull --hosts-dir` on node 2 goes through its
mirror, which asks node 1's mirror with the same credentials, with the upstream
stopped: the pull can only succeed if both legs are authenticated.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.kit.cluster import LocalCluster
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.metrics import metric_sum
from tests.httpclient import fetch

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


@dataclass
class Secured:
    cluster: LocalCluster
    authorization: str

    @property
    def good(self) -> dict[str, str]:
        return {"Authorization": self.authorization}


@pytest.fixture(scope="module", params=["1.6", "2.1"])
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    series = str(request.param)
    base = tmp_path_factory.mktemp(f"basicauth{series}")
    secret = base / "basic-auth"
    secret.mkdir()
    password = secrets.token_urlsafe(24)
    (secret / "username").write_text("spegel")
    (secret / "password").write_text(password)
    token = base64.b64encode(f"spegel:{password}".encode()).decode()
    with LocalCluster(
        2, base / "cluster", containerd_series=series, basic_auth_dir=secret, log_level="INFO"
    ) as cluster:
        yield Secured(cluster, f"Basic {token}")


def _image(cluster: LocalCluster, name: str, seed: int) -> GeneratedImage:
    image = generate_image(
        cluster.base_dir / "layouts" / name,
        name=f"auth/{name}",
        tag="v1",
        seed=seed,
        total_size=4 * MIB,
        layers=2,
    )
    push_image(image.layout_dir, image.tag, image.ref(cluster.upstream.host))
    return image


def test_the_registry_port_requires_the_credentials(secured: Secured) -> None:
    mirror = secured.cluster[0].mirror
    wrong = base64.b64encode(b"spegel:wrong").decode()
    for headers in ({}, {"Authorization": f"Basic {wrong}"}, {"Authorization": "Bearer x"}):
        for path in ("/v2/", f"/v2/x/blobs/sha256:{'0' * 64}"):
            refused = fetch(mirror.address, path, headers=headers)
            assert refused.status == 401, (path, headers)
            assert refused.header("WWW-Authenticate") == 'Basic realm="mirror"'
            assert refused.error_code() == "UNAUTHORIZED"
    assert fetch(mirror.address, "/v2/", headers=secured.good).status == 200
    missing = fetch(mirror.address, f"/v2/x/blobs/sha256:{'0' * 64}", headers=secured.good)
    assert missing.status == 404
    # The kubelet's probes and Prometheus need nothing (as in Spegel).
    for probe in ("/readyz", "/livez"):
        assert fetch(mirror.address, probe).status == 200
    with urllib.request.urlopen(mirror.metrics_url + "/metrics", timeout=5) as reply:
        assert reply.status == 200


def test_configuration_writes_the_header_for_each_mirror(secured: Secured) -> None:
    cluster = secured.cluster
    for node in cluster.nodes:
        path = node.containerd.config_path / cluster.upstream.host / "hosts.toml"
        hosts = tomllib.loads(path.read_text())["host"]
        assert hosts[node.mirror.url]["header"] == {"Authorization": secured.authorization}
        assert path.stat().st_mode & 0o777 == 0o600


def _wait_served_by_peer(secured: Secured, path: str, timeout: float = 15.0) -> None:
    mirror = secured.cluster[1].mirror
    deadline = time.monotonic() + timeout
    while True:
        reply = fetch(mirror.address, path, method="HEAD", headers=secured.good)
        if reply.status == 200 and reply.header("X-Mirror-Peer"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not served through node 1 in {timeout}s: {reply.status}")
        time.sleep(0.2)


def test_a_pull_through_an_authenticated_peer_without_the_upstream(secured: Secured) -> None:
    cluster = secured.cluster
    image = _image(cluster, "app", seed=41)
    ref = image.ref(cluster.upstream.host)
    cluster.pull(0, ref)  # node 1: its mirror has nothing yet, containerd goes upstream
    ns = f"?ns={cluster.upstream.host}"
    _wait_served_by_peer(secured, f"/v2/{image.name}/manifests/{image.tag}{ns}")
    for blob in image.images[0].blobs():
        section = "manifests" if blob.digest == image.digest else "blobs"
        _wait_served_by_peer(secured, f"/v2/{image.name}/{section}/{blob.digest}{ns}")
    cluster.upstream.stop()
    try:
        cluster.pull(1, ref)
    finally:
        cluster.upstream.start()
    containerd = cluster[1].containerd
    for blob in image.images[0].blobs():
        path = containerd.blob_path(blob.digest)
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == blob.digest


def test_containerd_without_the_credentials_falls_back_to_the_upstream(
    secured: Secured, tmp_path: Path
) -> None:
    """A node whose hosts.toml lacks the header (a rollout in progress): the mirror's
    401 makes containerd go on to the upstream, the pull does not fail."""
    cluster = secured.cluster
    image = _image(cluster, "fallback", seed=42)
    hosts_dir = tmp_path / "certs.d"
    write_hosts_toml(
        hosts_dir,
        cluster.upstream.host,
        cluster.upstream.url,
        mirrors=[cluster[1].mirror.url],
        dial_timeout="200ms",
    )
    metrics = cluster[1].mirror.metrics_url
    refused_before = metric_sum(metrics, "http_request_duration_seconds_count", code="401")
    cluster[1].containerd.pull(image.ref(cluster.upstream.host), hosts_dir=hosts_dir)
    assert metric_sum(metrics, "http_request_duration_seconds_count", code="401") > refused_before
