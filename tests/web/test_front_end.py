"""The front end in process: the real app and hot path in one trio.run, a fake DHT."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import trio
import wsproto
import wsproto.events
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import WebSocketConnection, open_websocket_url

from mirror.server.io import send_all
from tests.web.support import (
    GONE_DIGEST,
    PEER_HOST,
    REGISTRY,
    SERVING_HOST,
    http,
    in_process_node,
)


def _families(text: bytes) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text.decode())}


def _samples(text: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_metrics_count_a_local_hit_apart_from_a_mirror_miss(tmp_path: Path) -> None:
    async with in_process_node(tmp_path) as node:
        host, port = node.registry_address
        layer = node.image.layers[0]
        hit = await http(f"http://{host}:{port}{node.image.blob_path(layer)}")
        assert hit.status == 200 and len(hit.body) == layer.size
        missing = "sha256:" + "0" * 64
        miss = await http(f"http://{host}:{port}/v2/team/app/blobs/{missing}?ns={REGISTRY}")
        assert miss.status == 404
        reply = await http(node.web_url + "/metrics")
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain")
        families = _families(reply.body)
        for name in (
            "spegel_mirror_requests",
            "spegel_mirror_last_success_timestamp_seconds",
            "spegel_resolve_duration_seconds",
            "spegel_advertised_images",
            "spegel_advertised_image_tags",
            "spegel_advertised_image_digests",
            "spegel_advertised_keys",
            "http_request_duration_seconds",
            "http_response_size_bytes",
            "http_requests_inflight",
            "mirror_served_bytes",
            "mirror_registry_requests",
            "mirror_upstream_bytes_avoided",
            "mirror_peer_sent_bytes",
            "mirror_peer_received_bytes",
            "mirror_peer_failures",
            "mirror_dht_routing_table_size",
            "mirror_dht_datagrams_dropped",
            "mirror_open_connections",
            "mirror_registry_connection_limit",
            "mirror_registry_client_connection_limit",
            "mirror_registry_refused",
        ):
            assert name in families, name
        refused = _samples(reply.body, "mirror_registry_refused_total")
        assert refused == {(("reason", r),): 0 for r in ("client", "capacity", "descriptors")}
        limit = _samples(reply.body, "mirror_registry_client_connection_limit")
        assert limit == {(): 1024}
        # Spegel's count: only the local miss handed to the peers (none served it).
        requests = _samples(reply.body, "spegel_mirror_requests_total")
        assert requests == {(("cache", "miss"), ("registry", REGISTRY)): 1}
        assert _samples(reply.body, "spegel_mirror_last_success_timestamp_seconds")[()] == 0
        ours = _samples(reply.body, "mirror_registry_requests_total")
        assert ours[(("client", "containerd"), ("result", "local"))] == 1
        assert ours[(("client", "containerd"), ("result", "miss"))] == 1
        served = _samples(reply.body, "mirror_served_bytes_total")
        assert served[(("client", "containerd"), ("source", "local"))] == layer.size
        sizes = _samples(reply.body, "http_response_size_bytes_count")
        assert sizes[(("code", "200"), ("handler", "blob"), ("method", "GET"))] == 1
        inflight = _samples(reply.body, "http_requests_inflight")
        assert all(value == 0 for value in inflight.values()), inflight
        advertised = _samples(reply.body, "spegel_advertised_images")
        assert advertised == {(("registry", REGISTRY),): 1}
        assert "_created" not in reply.body.decode()


async def test_only_what_a_peer_served_is_a_mirror_success(tmp_path: Path) -> None:
    """A re-pull of an image the node holds and a measurement of it are no success of
    the mirror (#15: both set Last Mirror Success to "0s ago"); a blob a peer served is."""
    async with in_process_node(tmp_path) as node:
        host, port = node.registry_address
        base = f"http://{host}:{port}"
        image = node.image
        for path in (
            f"/v2/team/app/manifests/v1?ns={REGISTRY}",
            image.blob_path(image.config),
            image.blob_path(image.layers[0]),
        ):
            assert (await http(base + path)).status == 200, path
        measured = await http(
            node.web_url + "/debug/web/measure", method="POST", body={"image": image.name}
        )
        assert measured.json()["pull"]["error"] is None
        stats = (await http(node.web_url + "/debug/web/stats")).json()
        assert stats["last_success"] is None and stats["requests"]["last_success"] is None
        assert stats["requests"]["hit"] == 0 and stats["requests"]["local"] == 3
        assert stats["requests"]["measure"] == 3
        reply = await http(node.web_url + "/metrics")
        assert _samples(reply.body, "spegel_mirror_requests_total") == {}
        assert _samples(reply.body, "spegel_mirror_last_success_timestamp_seconds")[()] == 0

        blob = node.peer_blob
        served = await http(base + image.blob_path(blob))
        assert served.status == 200 and served.headers["x-mirror-peer"].startswith(SERVING_HOST)
        assert hashlib.sha256(served.body).hexdigest() == blob.digest.removeprefix("sha256:")
        reply = await http(node.web_url + "/metrics")
        requests = _samples(reply.body, "spegel_mirror_requests_total")
        assert requests == {(("cache", "hit"), ("registry", REGISTRY)): 1}
        assert _samples(reply.body, "spegel_mirror_last_success_timestamp_seconds")[()] > 1e9
        assert _samples(reply.body, "mirror_upstream_bytes_avoided_total")[()] == blob.size
        received = _samples(reply.body, "mirror_peer_received_bytes_total")
        assert received == {(("peer", SERVING_HOST),): blob.size}
        ours = _samples(reply.body, "mirror_registry_requests_total")
        assert ours[(("client", "containerd"), ("result", "hit"))] == 1
        assert ours[(("client", "measure"), ("result", "local"))] == 3
        stats = (await http(node.web_url + "/debug/web/stats")).json()
        assert stats["last_success"] is not None and stats["requests"]["hit"] == 1


async def test_bytes_and_failures_are_counted_per_peer(tmp_path: Path) -> None:
    async with in_process_node(tmp_path) as node:
        host, port = node.registry_address
        layer = node.image.layers[0]
        # A peer's request (Spegel's loop guard): named by the address it came from.
        served = await http(
            f"http://{host}:{port}{node.image.blob_path(layer)}",
            headers={"X-Spegel-Mirrored": "true"},
        )
        assert served.status == 200
        # A blob only a gone peer is recorded for: its failure, by its host.
        gone = await http(f"http://{host}:{port}/v2/team/app/blobs/{GONE_DIGEST}?ns={REGISTRY}")
        assert gone.status == 404
        reply = await http(node.web_url + "/metrics")
        sent = _samples(reply.body, "mirror_peer_sent_bytes_total")
        assert sent == {(("peer", "127.0.0.1"),): layer.size}
        failures = _samples(reply.body, "mirror_peer_failures_total")
        assert failures == {(("peer", PEER_HOST), ("reason", "unreachable")): 1}
        stats = (await http(node.web_url + "/debug/web/stats")).json()
        assert stats["requests"]["served"] == 1
        assert stats["requests"]["bytes_to_peers"] == layer.size
        # The peer table names the gone peer's registry port, learnt from the lookup,
        # next to its router port.
        (peer,) = stats["peers"]
        assert peer["router"] == f"{PEER_HOST}:5001"
        assert peer["registry"].startswith(f"{PEER_HOST}:")
        served_event = next(e for e in stats["events"] if e["client"] == "peer")
        assert served_event["peer"] == "127.0.0.1" and served_event["result"] == "local"


async def test_debug_page_assets_stats_and_metadata(tmp_path: Path) -> None:
    async with in_process_node(tmp_path) as node:
        page = await http(node.web_url + "/debug/web/")
        assert page.status == 200 and b"Last Mirror Success" in page.body
        assert b"http://" not in page.body and b"https://" not in page.body  # no CDN
        for asset, kind in (("app.js", "javascript"), ("style.css", "css")):
            reply = await http(f"{node.web_url}/debug/web/static/{asset}")
            assert reply.status == 200 and kind in reply.headers["content-type"]
        assert (await http(node.web_url + "/debug/web/static/nope.js")).status == 404
        stats = (await http(node.web_url + "/debug/web/stats")).json()
        assert stats["node_id"] == node.dht.node_id.hex()
        assert stats["last_success"] is None
        assert stats["counts"]["images"] == 1 and stats["counts"]["peers"] == 1
        assert stats["images"] == [
            {
                "name": node.image.name,
                "registry": REGISTRY,
                "repository": "team/app",
                "tag": "v1",
                "digest": node.image.manifest.digest,
            }
        ]
        metadata = (await http(node.web_url + "/debug/web/metadata")).json()
        assert metadata["node_id"] == node.dht.node_id.hex()


async def test_debug_web_disabled_keeps_metrics(tmp_path: Path) -> None:
    async with in_process_node(tmp_path, debug_web=False) as node:
        assert (await http(node.web_url + "/metrics")).status == 200
        for path in ("/debug/web/", "/debug/web/stats", "/debug/web/metadata"):
            assert (await http(node.web_url + path)).status == 404, path
        reply = await http(node.web_url + "/debug/web/measure", method="POST", body={"image": "x"})
        assert reply.status in (404, 405)


async def test_measure_pulls_through_the_registry_port(tmp_path: Path) -> None:
    async with in_process_node(tmp_path) as node:
        reply = await http(
            node.web_url + "/debug/web/measure",
            method="POST",
            body={"image": f"{REGISTRY}/team/app:v1"},
        )
        assert reply.status == 200, reply.body
        result = reply.json()
        assert result["error"] is None and result["pull"]["error"] is None
        assert [lookup["key"] for lookup in result["lookups"]] == [
            f"{REGISTRY}/team/app:v1",
            node.image.manifest.digest,
        ]
        assert all(len(lookup["peers"]) == 1 for lookup in result["lookups"])
        items = result["pull"]["items"]
        assert [item["kind"] for item in items] == ["manifest", "config", "layer"]
        assert items[2]["size"] == node.image.layers[0].size
        assert items[2]["media_type"] == "application/vnd.oci.image.layer.v1.tar"
        assert result["pull"]["total_bytes"] == sum(item["size"] for item in items)
        assert result["pull"]["throughput"] > 0


async def test_measure_rejects_bad_input_with_a_clear_400(tmp_path: Path) -> None:
    async with in_process_node(tmp_path) as node:
        url = node.web_url + "/debug/web/measure"
        for body, words in (
            ({"image": "Team/App:v1"}, "invalid image reference"),
            ({"image": "team/app:bad tag"}, "invalid image reference"),
            ({"image": "team/app:-v1"}, "invalid tag"),
            ({"image": ""}, "empty"),
            ({}, "empty"),
            (b"not json", "JSON object"),
            ({"image": "team/app", "time_limit": -1}, "time_limit"),
        ):
            reply = await http(url, method="POST", body=body)
            assert reply.status == 400, (body, reply.body)
            message = reply.json()["error"]
            assert words in message, (body, message)
        unknown = await http(url, method="POST", body={"image": f"{REGISTRY}/team/other:v9"})
        assert unknown.status == 200
        assert unknown.json()["pull"]["error"] == (
            "no peer has this image, and this node does not hold it"
        )


async def test_websocket_streams_hot_path_events(tmp_path: Path) -> None:
    async with in_process_node(tmp_path) as node:
        host, port = node.registry_address
        ws_url = node.web_url.replace("http://", "ws://") + "/debug/web/ws"
        async with open_websocket_url(ws_url) as ws:
            first = json.loads(await ws.get_message())
            assert first["type"] == "stats"
            assert first["stats"]["node_id"] == node.dht.node_id.hex()
            layer = node.image.layers[0]
            await http(f"http://{host}:{port}{node.image.blob_path(layer)}")
            with trio.fail_after(5):
                while True:
                    message = json.loads(await ws.get_message())
                    if message["type"] == "events":
                        break
        event = message["events"][0]
        assert event["result"] == "local" and event["source"] == "local"
        assert event["client"] == "containerd"
        assert event["reference"] == layer.digest and event["bytes"] == layer.size
        assert event["registry"] == REGISTRY and event["repository"] == "team/app"
        # The cards' counters come with the events they count, not 2 s later.
        assert message["requests"]["local"] == 1
        assert message["requests"]["last_success"] is None


async def _next_message(ws: WebSocketConnection, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await ws.get_message())
        if message["type"] == kind:
            return message


async def test_a_body_being_sent_is_shown_with_its_bytes_so_far(tmp_path: Path) -> None:
    big = 64 * 1024 * 1024  # more than the kernel buffers between a stalled reader and us
    async with in_process_node(tmp_path, layer_sizes=(big,)) as node:
        host, port = node.registry_address
        layer = node.image.layers[0]
        ws_url = node.web_url.replace("http://", "ws://") + "/debug/web/ws"
        async with open_websocket_url(ws_url) as ws:
            await _next_message(ws, "stats")
            with trio.socket.socket() as reader:
                reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                await reader.connect((host, port))
                path = node.image.blob_path(layer)
                await send_all(reader, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                received = len(await reader.recv(1 << 20))
                with trio.fail_after(10):
                    (transfer,) = (await _next_message(ws, "transfers"))["transfers"]
                assert transfer["length"] == big and transfer["reference"] == layer.digest
                assert transfer["client"] == "containerd" and transfer["source"] == "local"
                assert 0 < transfer["bytes"] < big
                (listed,) = (await http(node.web_url + "/debug/web/stats")).json()["transfers"]
                assert listed["id"] == transfer["id"]
                # The reader takes more: the next report says so.
                while received < transfer["bytes"] + 8 * 1024 * 1024:
                    received += len(await reader.recv(1 << 20))
                with trio.fail_after(10):
                    while True:
                        (later,) = (await _next_message(ws, "transfers"))["transfers"]
                        if later["bytes"] > transfer["bytes"]:
                            break
                while received < big:
                    chunk = await reader.recv(1 << 20)
                    assert chunk
                    received += len(chunk)
            with trio.fail_after(10):
                while (await _next_message(ws, "transfers"))["transfers"]:
                    pass
        assert node.telemetry.transfers.snapshot() == []


async def _raw_websocket(url: str) -> tuple[trio.socket.SocketType, wsproto.WSConnection]:
    """A websocket whose reader reads nothing after the handshake (a tiny receive buffer)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await sock.send(ws.send(wsproto.events.Request(host=host, target="/debug/web/ws")))
    while True:
        ws.receive_data(await sock.recv(4096))
        if any(isinstance(e, wsproto.events.AcceptConnection) for e in ws.events()):
            return sock, ws


async def _pipelined_heads(host: str, port: int, path: str, count: int, burst: int = 200) -> None:
    request = f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with trio.socket.socket() as client:
        await client.connect((host, port))
        for start in range(0, count, burst):
            n = min(burst, count - start)
            await send_all(client, request * n)
            answered, buffer = 0, b""
            while answered < n:  # a HEAD answer is a head alone: one blank line each
                buffer += await client.recv(1 << 20)
                answered += buffer.count(b"\r\n\r\n")
                buffer = (
                    buffer[buffer.rfind(b"\r\n\r\n") + 4 :] if b"\r\n\r\n" in buffer else buffer
                )


async def test_slow_websocket_reader_never_blocks_the_hot_path(tmp_path: Path) -> None:
    async with in_process_node(tmp_path) as node:
        host, port = node.registry_address
        layer = node.image.layers[0]
        stalled, ws = await _raw_websocket(node.web_url)
        with stalled:
            with trio.fail_after(20):
                await _pipelined_heads(host, port, node.image.blob_path(layer), 3000)
                # (the last answers' events may land just after the client read them)
                assert node.telemetry.feed.published > 2900
                reply = await http(f"http://{host}:{port}{node.image.blob_path(layer)}")
                digest = hashlib.sha256(reply.body).hexdigest()
                assert digest == layer.digest.removeprefix("sha256:")
            # The stalled reader now reads: it was told it fell behind.
            dropped = received = 0
            text = ""
            with trio.move_on_after(3):
                while not dropped:
                    data = await stalled.recv(1 << 20)
                    received += len(data)
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, wsproto.events.TextMessage):
                            text += event.data
                            if event.message_finished:
                                dropped += json.loads(text).get("dropped", 0)
                                text = ""
        assert dropped > 0, f"the stalled reader got {received} bytes and no drop notice"


async def test_a_stalled_reader_is_cut_so_shutdown_never_hangs(tmp_path: Path) -> None:
    with trio.fail_after(15):
        async with in_process_node(tmp_path, stall_timeout=1.0) as node:
            host, port = node.registry_address
            path = node.image.blob_path(node.image.layers[0])
            stalled, _ws = await _raw_websocket(node.web_url)
            await _pipelined_heads(host, port, path, 3000)
            await trio.sleep(0.5)  # the feed's batches are now stuck in the socket
            started = trio.current_time()
        # Leaving stopped both servers although `stalled` never read a byte.
        assert trio.current_time() - started < 5
        stalled.close()


async def test_websocket_closed_mid_stream_leaves_the_node_serving(tmp_path: Path) -> None:
    async with in_process_node(tmp_path) as node:
        host, port = node.registry_address
        layer = node.image.layers[0]
        url = f"http://{host}:{port}{node.image.blob_path(layer)}"
        ws_url = node.web_url.replace("http://", "ws://") + "/debug/web/ws"
        for _ in range(3):
            sock, _ws = await _raw_websocket(node.web_url)
            await http(url)
            sock.close()  # no close frame: the connection just goes away
        for _ in range(3):
            async with open_websocket_url(ws_url) as ws:
                await ws.get_message()
                await http(url)
        reply = await http(url)
        assert reply.status == 200 and len(reply.body) == layer.size
        assert (await http(node.web_url + "/metrics")).status == 200
