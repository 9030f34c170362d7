"""What `ctr --hosts-dir` sends to a mirror: this is how our mirror gets addressed.

containerd 1.6 asks each `[host]` in order with the same `/v2/<repo>/...`
path plus `?ns=<registry name>`, and falls back per request (404 or
connection error) to the next host and finally to `server`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.kit.containerd import ContainerdNode
from bench.kit.hosts import write_hosts_toml
from bench.kit.procs import free_port
from bench.kit.recorder import RecordedRequest, RequestRecorder

from .conftest import Pushed

pytestmark = pytest.mark.integration


@pytest.fixture
def nowhere() -> str:
    """A registry name where nothing listens: if hosts.toml were ignored, the pull
    would fail on loopback (a DNS name would send a lookup off the machine)."""
    return f"127.0.0.9:{free_port('127.0.0.9')}"


@pytest.fixture
def upstream_front(pushed: Pushed) -> Iterator[RequestRecorder]:
    """Counts what reaches the upstream."""
    with RequestRecorder("127.0.0.1", upstream=pushed.registry.host) as front:
        yield front


def paths(requests: list[RecordedRequest]) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in requests]


def expected_paths(pushed: Pushed) -> list[tuple[str, str]]:
    image = pushed.small
    (platform_image,) = image.images
    blobs = [platform_image.config, *platform_image.layers]
    return [
        ("HEAD", f"/v2/{image.name}/manifests/{image.tag}"),
        ("GET", f"/v2/{image.name}/manifests/{image.digest}"),
        *(("GET", f"/v2/{image.name}/blobs/{b.digest}") for b in blobs),
    ]


def test_server_only_hosts_toml_is_honoured(
    pushed: Pushed,
    nodes: list[ContainerdNode],
    upstream_front: RequestRecorder,
    nowhere: str,
) -> None:
    node = nodes[0]
    write_hosts_toml(node.config_path, nowhere, upstream_front.url)
    ref = f"{nowhere}/{pushed.small.name}:{pushed.small.tag}"
    assert node.pull(ref).digest == pushed.small.digest
    assert sorted(paths(upstream_front.recorded())) == sorted(expected_paths(pushed))


def test_mirror_miss_falls_back_to_server_per_request(
    pushed: Pushed,
    nodes: list[ContainerdNode],
    upstream_front: RequestRecorder,
    nowhere: str,
) -> None:
    node = nodes[0]
    with RequestRecorder("127.0.0.2") as mirror:
        write_hosts_toml(node.config_path, nowhere, upstream_front.url, [mirror.url])
        ref = f"{nowhere}/{pushed.small.name}:{pushed.small.tag}"
        node.pull(ref)
        seen = mirror.recorded()
    assert sorted(paths(seen)) == sorted(expected_paths(pushed))
    assert sorted(paths(upstream_front.recorded())) == sorted(expected_paths(pushed))
    for request in seen:
        assert request.query == {"ns": [nowhere]}
        assert request.headers["host"] == mirror.host
        assert request.headers["user-agent"].startswith("containerd/")
        assert "range" not in request.headers
        assert request.status == 404
    head = seen[0]
    assert head.method == "HEAD"
    assert "application/vnd.oci.image.index.v1+json" in head.headers["accept"]


def test_mirror_hit_serves_everything(
    pushed: Pushed, nodes: list[ContainerdNode], upstream_front: RequestRecorder
) -> None:
    node = nodes[0]
    registry = pushed.registry
    with RequestRecorder("127.0.0.3", upstream=registry.host) as mirror:
        write_hosts_toml(node.config_path, registry.host, upstream_front.url, [mirror.url])
        node.pull(pushed.ref(pushed.small))
        seen = mirror.recorded()
    assert sorted(paths(seen)) == sorted(expected_paths(pushed))
    assert all(r.query == {"ns": [registry.host]} and r.status == 200 for r in seen)
    assert upstream_front.recorded() == []
    blob_requests = [r for r in seen if "/blobs/" in r.path]
    assert {r.headers["accept"] for r in blob_requests} == {
        "application/vnd.oci.image.config.v1+json, */*",
        "application/vnd.oci.image.layer.v1.tar, */*",
    }


def test_dead_mirror_falls_back(
    pushed: Pushed,
    nodes: list[ContainerdNode],
    upstream_front: RequestRecorder,
    nowhere: str,
) -> None:
    node = nodes[0]
    dead = f"http://127.0.0.4:{free_port('127.0.0.4')}"
    write_hosts_toml(node.config_path, nowhere, upstream_front.url, [dead])
    ref = f"{nowhere}/{pushed.small.name}:{pushed.small.tag}"
    assert node.pull(ref).digest == pushed.small.digest
    assert sorted(paths(upstream_front.recorded())) == sorted(expected_paths(pushed))
