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
        _wait_until_mirrored(
            cluster[1].mirror.address, f"/v2/{image.name}/manifests/{image.tag}{ns}"
        )
        hits_before = _hits(cluster[1].mirror.metrics_url, cluster.upstream.host)
        cluster.pull(1, ref)
        hits_after = _hits(cluster[1].mirror.metrics_url, cluster.upstream.host)
        assert hits_after - hits_before >= len(image.blobs()), (hits_before, hits_after)
        yield cluster, image


def _samples(metrics_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = http_sync(metrics_url + "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }


def test_metrics_show_the_mirrored_pull(mirrored: tuple[LocalCluster, GeneratedImage]) -> None:
    cluster, image = mirrored
    registry = cluster.upstream.host
    samples = _samples(cluster[1].mirror.metrics_url)
    assert samples[("spegel_mirror_requests_total", (("cache", "hit"), ("registry", registry)))]
    assert samples[("spegel_mirror_last_success_timestamp_seconds", ())] > time.time() - 120
    assert samples[("spegel_resolve_duration_seconds_count", (("router", "dht"),))] >= 1
    assert samples[("spegel_advertised_images", (("registry", registry),))] == 1
    relayed = (("client", "containerd"), ("source", "peer"))
    assert samples[("mirror_served_bytes_total", relayed)] > MIB
    assert samples[("mirror_upstream_bytes_avoided_total", ())] >= image.total_size
    received = samples[("mirror_peer_received_bytes_total", (("peer", cluster[0].mirror.host),))]
    assert received >= image.total_size
    holder = _samples(cluster[0].mirror.metrics_url)
    sent_to_peers = sum(
        v for (name, _), v in holder.items() if name == "mirror_peer_sent_bytes_total"
    )
    assert sent_to_peers >= image.total_size
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
    assert any(e["result"] == "hit" and e["source"] == "peer" for e in stats["events"])
    first = http_sync(cluster[0].mirror.metrics_url + "/debug/web/stats").json()
    assert first["last_success"] is None  # node 1 got everything from the upstream


def test_a_re_pull_and_a_measurement_on_the_holder_are_no_mirror_success(
    mirrored: tuple[LocalCluster, GeneratedImage],
) -> None:
    """#15: on a node that holds the image (node 1, from the upstream), a re-pull and a
    measurement both set Last Mirror Success to "0s ago" and counted as hits."""
    cluster, image = mirrored
    holder = cluster[0].mirror
    ref = image.ref(cluster.upstream.host)
    before = _samples(holder.metrics_url)
    cluster.pull(0, ref)
    measured = http_sync(
        holder.metrics_url + "/debug/web/measure", method="POST", body={"image": ref}
    ).json()
    assert measured["pull"]["error"] is None
    assert {item["source"] for item in measured["pull"]["items"]} == {"local"}
    after = _samples(holder.metrics_url)
    stats = http_sync(holder.metrics_url + "/debug/web/stats").json()
    assert stats["last_success"] is None and stats["requests"]["hit"] == 0
    assert after[("spegel_mirror_last_success_timestamp_seconds", ())] == 0
    spegel = [key for key in after if key[0] == "spegel_mirror_requests_total"]
    assert all(after[key] == before.get(key, 0) for key in spegel), spegel
    measure_local = ("mirror_registry_requests_total", (("client", "measure"), ("result", "local")))
    assert after[measure_local] == len(image.blobs())
    assert stats["requests"]["measure"] == len(image.blobs())


@pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed")
async def test_the_page_in_a_real_browser(
    mirrored: tuple[LocalCluster, GeneratedImage], tmp_path: Path
) -> None:
    cluster, image = mirrored
    node = cluster[1].mirror
    # A second image only node 1 holds: node 2's answers for it are mirror hits.
    other = generate_image(
        tmp_path / "other", name="web/other", tag="v1", seed=22, total_size=MIB, layers=1
    )
    other_ref = other.ref(cluster.upstream.host)
    push_image(other.layout_dir, other.tag, other_ref)
    cluster.pull(0, other_ref)
    ns = f"?ns={cluster.upstream.host}"
    _wait_until_mirrored(node.address, f"/v2/{other.name}/manifests/{other.tag}{ns}")
    async with open_page(width=1280) as page:
        await page.call("Page.navigate", url=node.metrics_url + "/debug/web/")
        last = await page.wait_for(
            "(t => /^[0-9]+(h[0-9]+m|m[0-9]+s|s) ago$/.test(t) && t)"
            "(document.getElementById('last-success').textContent)"
        )
        assert last.endswith(" ago")
        assert await page.wait_for("document.getElementById('live').textContent === 'live'")
        assert await page.evaluate("document.getElementById('count-peers').textContent") == "1"
        rows = await page.evaluate("document.querySelectorAll('#events tbody tr').length")
        assert rows >= 1
        # Node 1 in the peer table: its router port and the registry port lookups named.
        cells = await page.evaluate(
            "[...document.querySelectorAll('#peers tbody td')].map((td) => td.textContent)"
        )
        assert cells[2] == cluster[0].mirror.address, cells

        # A hit while the page follows the feed: the cards move with the row.
        hits = int(await page.evaluate("document.getElementById('count-hits').textContent"))
        await page.evaluate(WATCH_CARDS)
        config = other.images[0].config
        assert fetch(node.address, f"/v2/{other.name}/blobs/{config.digest}{ns}").status == 200
        seen = await page.wait_for(
            "window.seen.find((s) => s.rows.some((r) => r.includes("
            f"{json.dumps(config.digest[:19])}) && r.includes('hit')))"
        )
        assert seen["hits"] == str(hits + 1), seen
        assert re.match(r"^[0-9]s ago$", seen["lastSuccess"]), seen

        ref = image.ref(cluster.upstream.host)
        await page.evaluate(
            f"document.getElementById('measure-image').value = {json.dumps(ref)};"
            "document.getElementById('measure-form').requestSubmit(); true"
        )
        with trio.fail_after(30):
            totals = await page.wait_for("document.getElementById('measure-totals')?.textContent")
        assert re.match(r"^\d+ items, ", totals), totals
        lookups = await page.evaluate(
            "document.querySelector('#measure-result .lookups').textContent"
        )
        router = cells[1]
        assert f"{cluster[0].mirror.address} · router {router}" in lookups, (lookups, router)
        # The page fits a phone's width and a laptop's, Measure's tables included.
        for width in (1280, 420):
            await page.resize(width)
            overflow = await page.overflow()
            assert overflow["page"] <= overflow["viewport"], (width, overflow)
            assert overflow["tables"] == [], (width, overflow)
            await page.evaluate("window.scrollTo(0, 0); true")
            await page.screenshot(ARTIFACTS / f"web-debug-page-cluster-{width}.png")
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
        fetch(node_1.address, manifest)  # node 1 holds it: served from its own disk
        _wait_for_text(out, f"{node_1.host}:{node_1.metrics_port} local manifest", timeout=5)
        fetch(node_1.address, manifest, headers={"X-Spegel-Mirrored": "true"})
        _wait_for_text(out, f"{node_1.host}:{node_1.metrics_port} served manifest", timeout=5)
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


# Each time the events table changes: its rows and what the cards said at that moment.
WATCH_CARDS = """
window.seen = [];
new MutationObserver(() => window.seen.push({
  rows: [...document.querySelectorAll('#events tbody tr')].map((tr) => tr.textContent),
  hits: document.getElementById('count-hits').textContent,
  lastSuccess: document.getElementById('last-success').textContent,
})).observe(document.querySelector('#events tbody'), { childList: true });
true
"""


def _wait_until_mirrored(address: str, manifest: str) -> None:
    """Until `address`'s node finds a peer serving `manifest` (the DHT has the record)."""
    deadline = time.monotonic() + 15
    while not fetch(address, manifest, method="HEAD").header("X-Mirror-Peer"):
        assert time.monotonic() < deadline, f"{address} never found a peer for {manifest}"
        time.sleep(0.2)


def _wait_for_text(path: Path, text: str, *, count: int = 1, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while path.read_text().count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} x{count} not in:\n{path.read_text()}")
        time.sleep(0.05)
