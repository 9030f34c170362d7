"""What a web page elsewhere, or a second client, can make the metrics port do: nothing.

The front end in process (real app and hot path, a fake DHT). A cross-site page can
send a `text/plain` or form POST without a CORS preflight, and open a WebSocket
with no CORS at all; the port refuses both. Measurements run one at a time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from mirror.basicauth import BasicAuth
from mirror.web.app import same_origin
from tests.web.support import REGISTRY, RegistryGate, Reply, http, in_process_node

IMAGE = {"image": f"{REGISTRY}/team/app:v1", "time_limit": 60}


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ],
)
async def test_measure_refuses_what_a_cross_site_form_can_send(
    tmp_path: Path, content_type: str
) -> None:
    gate = RegistryGate()
    async with in_process_node(tmp_path, gate=gate) as node:
        url = node.web_url + "/debug/web/measure"
        refused = await http(url, method="POST", body=IMAGE, headers={"Content-Type": content_type})
        assert refused.status == 415, refused.body
        assert "application/json" in refused.json()["error"]
        assert not gate.entered.is_set()  # nothing was pulled
        gate.release()
        accepted = await http(
            url,
            method="POST",
            body=IMAGE,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert accepted.status == 200 and accepted.json()["pull"]["error"] is None


async def test_a_second_measurement_while_one_runs_is_refused(tmp_path: Path) -> None:
    gate = RegistryGate()
    async with in_process_node(tmp_path, gate=gate) as node:
        url = node.web_url + "/debug/web/measure"
        first: list[Reply] = []

        async def measure_first() -> None:
            first.append(await http(url, method="POST", body=IMAGE))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(measure_first)
            with trio.fail_after(20):
                await gate.entered.wait()  # the first one is pulling (and held)
            second = await http(url, method="POST", body=IMAGE, socket_timeout=10)
            assert second.status == 429, second.body
            assert "already running" in second.json()["error"]
            gate.release()
        assert first[0].status == 200 and first[0].json()["pull"]["error"] is None
        # The slot is free again once the first one ended.
        third = await http(url, method="POST", body=IMAGE, socket_timeout=20)
        assert third.status == 200


async def test_a_cross_site_origin_is_refused(tmp_path: Path) -> None:
    async with in_process_node(tmp_path) as node:
        url = node.web_url + "/debug/web/measure"
        own = node.web_url  # "http://127.0.0.1:<port>", what a browser on the page sends
        for origin in ("http://evil.example", "null", own.replace("127.0.0.1", "127.0.0.9")):
            refused = await http(url, method="POST", body=IMAGE, headers={"Origin": origin})
            assert refused.status == 403, origin
        accepted = await http(url, method="POST", body=IMAGE, headers={"Origin": own})
        assert accepted.status == 200
        ws_url = node.web_url.replace("http://", "ws://") + "/debug/web/ws"
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(
                ws_url, extra_headers=[(b"Origin", b"http://evil.example")]
            ):
                pass
        assert rejected.value.status_code == 403
        async with open_websocket_url(ws_url, extra_headers=[(b"Origin", own.encode())]) as ws:
            assert '"type": "stats"' in str(await ws.get_message())
        async with open_websocket_url(ws_url) as ws:  # `mirror watch`: no Origin
            assert '"type": "stats"' in str(await ws.get_message())


def test_same_origin() -> None:
    assert same_origin(None, "127.0.0.1:9090")
    assert same_origin("http://127.0.0.1:9090", "127.0.0.1:9090")
    assert same_origin("http://Node-1:9090", "node-1:9090")
    assert same_origin("https://metrics.example", "metrics.example")
    assert not same_origin("http://127.0.0.1:9091", "127.0.0.1:9090")
    assert not same_origin("http://evil.example", "127.0.0.1:9090")
    assert not same_origin("null", "127.0.0.1:9090")
    assert not same_origin("file://127.0.0.1:9090", "127.0.0.1:9090")
    assert not same_origin("http://127.0.0.1:9090", None)


async def test_measure_pulls_with_the_registrys_basic_auth(tmp_path: Path) -> None:
    auth = BasicAuth.from_credentials(b"hello", b"world")
    async with in_process_node(tmp_path, auth=auth) as node:
        host, port = node.registry_address
        layer = node.image.layers[0]
        assert (await http(f"http://{host}:{port}{node.image.blob_path(layer)}")).status == 401
        reply = await http(node.web_url + "/debug/web/measure", method="POST", body=IMAGE)
        assert reply.status == 200
        pull = reply.json()["pull"]
        assert pull["error"] is None
        assert [item["kind"] for item in pull["items"]] == ["manifest", "config", "layer"]
