"""The front end of real nodes: a 2-node cluster, a real pull through the mirror, a real browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bench.kit.cluster import LocalCluster
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.mirror import MirrorNode
from tests.httpclient import fetch
from tests.web.browser import chromium_binary, open_page
from tests.web.support import http_sync

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _hits(node_url: str, registry: str) -> float:
    text = http_sync(node_url + "/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "spegel_mirror_requests_total" and sample.labels == {
                "registry": registry,
                "cache": "hit",
            }:
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def mirrored(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, GeneratedImage]]:
    """Node 1 pulled an image from the upstream; node 2 then pulled it through its mirror."""
    with LocalCluster(2, tmp_path_factory.mktemp("web")) as cluster:
        image = generate_image(
            cluster.base_dir / "layout",
            name="web/app",
            tag="v1",
            seed=21,
            total_size=3 * MIB,
            layers=2,
        )
        ref = image.ref(cluster.upstream.host)
        push_image(image.layout_dir, image.tag, ref)
        cluster.pull(0, ref)
        ns = f"?ns={cluster.upstream.host}"
        deadline = time.monotonic() + 15
        while not fetch(
            cluster[1].mirror.address, f"/v2/{image.name}/manifests/{image.tag}{ns}", method="HEAD"
        ).header("X-Mirror-Peer"):
            assert time.monotonic() < deadline, "node 2 never found node 1's image"
            time.sleep(0.2)
        hits_before = _hits(cluster[1].mirror.metrics_url, cluster.upstream.host)
        cluster.pull(1, ref)
        hits_after = _hits(cluster[1].mirror.metrics_url, cluster.upstream.host)
        assert hits_after - hits_before >= len(image.blobs()), (hits_before, hits_after)
        yield cluster, image


def test_metrics_show_the_mirrored_pull(mirrored: tuple[LocalCluster, GeneratedImage]) -> None:
    cluster, _ = mirrored
    registry = cluster.upstream.host
    reply = http_sync(cluster[1].mirror.metrics_url + "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }
    assert samples[("spegel_mirror_requests_total", (("cache", "hit"), ("registry", registry)))]
    assert samples[("spegel_mirror_last_success_timestamp_seconds", ())] > time.time() - 120
    assert samples[("spegel_resolve_duration_seconds_count", (("router", "dht"),))] >= 1
    assert samples[("spegel_advertised_images", (("registry", registry),))] == 1
    assert samples[("mirror_served_bytes_total", (("source", "peer"),))] > MIB
    assert samples[("mirror_dht_routing_table_size", ())] >= 1
    blob_gets = (("code", "200"), ("handler", "blob"), ("method", "GET"))
    assert samples[("http_request_duration_seconds_count", blob_gets)] >= 2


def test_stats_report_the_last_success(mirrored: tuple[LocalCluster, GeneratedImage]) -> None:
    cluster, image = mirrored
    stats = http_sync(cluster[1].mirror.metrics_url + "/debug/web/stats").json()
    assert stats["last_success"] is not None
    assert 0 <= stats["now"] - stats["last_success"] < 120
    assert stats["counts"]["peers"] == 1 and stats["counts"]["images"] == 1
    assert stats["images"][0]["digest"] == image.digest
    assert any(e["cache"] == "hit" and e["source"] == "peer" for e in stats["events"])
    first = http_sync(cluster[0].mirror.metrics_url + "/debug/web/stats").json()
    assert first["last_success"] is None  # node 1 got everything from the upstream


@pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed")
async def test_the_page_in_a_real_browser(mirrored: tuple[LocalCluster, GeneratedImage]) -> None:
    cluster, image = mirrored
    url = cluster[1].mirror.metrics_url + "/debug/web/"
    async with open_page() as page:
        await page.call("Page.navigate", url=url)
        last = await page.wait_for(
            "(t => /^[0-9]+(h[0-9]+m|m[0-9]+s|s) ago$/.test(t) && t)"
            "(document.getElementById('last-success').textContent)"
        )
        assert last.endswith(" ago")
        assert await page.wait_for("document.getElementById('live').textContent === 'live'")
        assert await page.evaluate("document.getElementById('count-peers').textContent") == "1"
        rows = await page.evaluate("document.querySelectorAll('#events tbody tr').length")
        assert rows >= 1
        ref = image.ref(cluster.upstream.host)
        await page.evaluate(
            f"document.getElementById('measure-image').value = {json.dumps(ref)};"
            "document.getElementById('measure-form').requestSubmit(); true"
        )
        with trio.fail_after(30):
            totals = await page.wait_for("document.getElementById('measure-totals')?.textContent")
        assert re.match(r"^\d+ items, ", totals), totals
        assert "no peer found" not in await page.evaluate(
            "document.getElementById('measure-result').textContent"
        )
        await page.evaluate("window.scrollTo(0, 0); true")
        await page.screenshot(ARTIFACTS / "web-debug-page.png")
        await page.evaluate(
            "document.getElementById('measure-image').value = 'Not A/Valid::ref';"
            "document.getElementById('measure-form').requestSubmit(); true"
        )
        error = await page.wait_for("document.querySelector('#measure-result .error')?.textContent")
        assert "invalid image reference" in error


def test_measure_api_and_bad_input(mirrored: tuple[LocalCluster, GeneratedImage]) -> None:
    cluster, image = mirrored
    url = cluster[1].mirror.metrics_url + "/debug/web/measure"
    result = http_sync(url, method="POST", body={"image": image.ref(cluster.upstream.host)}).json()
    tag_lookup, digest_lookup = result["lookups"]
    assert tag_lookup["key"] == image.ref(cluster.upstream.host)
    assert digest_lookup["key"] == image.digest
    for lookup in result["lookups"]:
        others = [peer for peer in lookup["peers"] if not peer["self"]]
        assert [peer["address"] for peer in others] == [cluster[0].mirror.address]
    assert result["pull"]["total_bytes"] == image.total_size
    assert len(result["pull"]["items"]) == len(image.blobs())
    bad = http_sync(url, method="POST", body={"image": "UPPER/case:v1"})
    assert bad.status == 400 and "invalid image reference" in bad.json()["error"]


def test_watch_follows_nodes_across_a_restart(
    mirrored: tuple[LocalCluster, GeneratedImage], tmp_path: Path
) -> None:
    cluster, image = mirrored
    node_1 = cluster[0].mirror
    before = http_sync(node_1.metrics_url + "/debug/web/metadata").json()["node_id"]
    out = tmp_path / "watch.out"
    ns = f"?ns={cluster.upstream.host}"
    manifest = f"/v2/{image.name}/manifests/{image.digest}{ns}"
    with out.open("w") as sink:
        watch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mirror",
                "watch",
                node_1.metrics_url,
                cluster[1].mirror.metrics_url,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_text(out, "connected to node", count=2)
        fetch(cluster[1].mirror.address, manifest)
        _wait_for_text(out, f"{image.name}@{image.digest.removeprefix('sha256:')[:12]}")
        node_1.restart()
        _wait_for_text(out, "trying again")
        _wait_for_text(out, "connected to node", count=3)
        fetch(node_1.address, manifest)
        _wait_for_text(out, f"{node_1.host}:{node_1.metrics_port} hit", timeout=5)
    finally:
        watch.terminate()
        watch.wait(timeout=5)
    after = http_sync(node_1.metrics_url + "/debug/web/metadata").json()["node_id"]
    assert after == before  # the identity lives in --data-dir


def test_debug_web_disabled_keeps_metrics(
    mirrored: tuple[LocalCluster, GeneratedImage], tmp_path: Path
) -> None:
    cluster, _ = mirrored
    host = "127.0.0.3"
    node = MirrorNode(
        host=host,
        containerd_sock=cluster[0].containerd.address,
        workdir=tmp_path / "mirror",
        extra_args=["--debug-web-enabled=false"],
    )
    node.start(wait_ready=False)
    try:
        assert http_sync(node.metrics_url + "/metrics").status == 200
        assert http_sync(node.metrics_url + "/debug/web/").status == 404
        assert http_sync(node.metrics_url + "/debug/web/stats").status == 404
    finally:
        node.stop()


def _wait_for_text(path: Path, text: str, *, count: int = 1, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while path.read_text().count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} x{count} not in:\n{path.read_text()}")
        time.sleep(0.05)
