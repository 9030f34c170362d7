"""Bootstrap kinds: static (host:port and multiaddr), dns, http (client and server)."""

from __future__ import annotations

import functools
import json
import socket

import pytest
import trio
from dht_cluster import free_port, run_member

import dht.bootstrap
from dht import (
    DhtNode,
    DnsBootstrapper,
    HttpBootstrapper,
    NodeConfig,
    StaticBootstrapper,
    parse_peer_address,
)
from dht.bootstrap import http_get, parse_address_list


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.2:5001", ("127.0.0.2", 5001)),
        ("[::1]:5001", ("::1", 5001)),
        ("node-a.example:5001", ("node-a.example", 5001)),
        (":5001", ("0.0.0.0", 5001)),
        ("/ip4/10.0.0.1/udp/5001", ("10.0.0.1", 5001)),
        ("/ip4/10.0.0.1/tcp/5001/p2p/12D3KooWRcXfZ2ZkCNDy2vHr", ("10.0.0.1", 5001)),
        ("/ip6/fe80:0::1/udp/4001", ("fe80::1", 4001)),
        ("/dns4/spegel.kube-system.svc/tcp/5001", ("spegel.kube-system.svc", 5001)),
    ],
)
def test_parse_peer_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_peer_address(text) == expected


def test_parse_peer_address_defaults_and_errors() -> None:
    assert parse_peer_address("10.0.0.1", default_port=5001) == ("10.0.0.1", 5001)
    assert parse_peer_address("::1", default_port=5001) == ("::1", 5001)
    assert parse_peer_address("/ip4/10.0.0.1", default_port=7) == ("10.0.0.1", 7)
    for bad in ("", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:99999", "/udp/5001", "[::1", "a b:1"):
        with pytest.raises(ValueError):
            parse_peer_address(bad)


def test_parse_address_list() -> None:
    assert parse_address_list(b'["127.0.0.1:5001", 3, "x:1"]') == ["127.0.0.1:5001", "x:1"]
    assert parse_address_list(b'"127.0.0.1:5001"') == ["127.0.0.1:5001"]
    assert parse_address_list(b"/ip4/127.0.0.1/tcp/5001/p2p/abc\n\n") == [
        "/ip4/127.0.0.1/tcp/5001/p2p/abc"
    ]
    assert parse_address_list(b"{}") == []


async def _joins(bootstrapper: object, port: int, host: str = "127.0.0.2") -> None:
    async with trio.open_nursery() as nursery:
        first = await nursery.start(
            run_member, NodeConfig(bind_host="127.0.0.1", bind_port=port), None
        )
        joiner = await nursery.start(
            run_member, NodeConfig(bind_host=host, bind_port=port), bootstrapper
        )
        with trio.fail_after(5):
            await joiner.node.wait_ready()
        assert [c.node_id for c in joiner.node.peers()] == [first.node.node_id]
        with trio.fail_after(5):
            await first.node.wait_ready()  # and it learnt of the joiner
        nursery.cancel_scope.cancel()


async def test_static_bootstrap() -> None:
    port = free_port(2)
    await _joins(StaticBootstrapper([f"127.0.0.1:{port}"]), port)


@pytest.mark.parametrize("form", ["/ip4/127.0.0.1/udp/{port}", "/ip4/127.0.0.1/tcp/{port}/p2p/Qm"])
async def test_static_bootstrap_multiaddr(form: str) -> None:
    port = free_port(2)
    await _joins(StaticBootstrapper([form.format(port=port)]), port)


async def test_dns_bootstrap_uses_own_router_port() -> None:
    port = free_port(2)
    bootstrapper = DnsBootstrapper("localhost")
    peers = await bootstrapper.peers(("127.0.0.2", port))
    assert ("127.0.0.1", port) in peers
    await _joins(bootstrapper, port)


async def test_dns_bootstrap_survives_a_failed_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    # A name that really fails would send a query to the machine's resolver; tests
    # send nothing beyond 127.0.0.x, so the failure is the resolver's answer, stubbed.
    async def no_such_name(host: str, port: int) -> list[tuple[str, int]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(dht.bootstrap, "resolve", no_such_name)
    assert await DnsBootstrapper("mirror-bootstrap.example").peers(("127.0.0.2", 5001)) == []


async def test_http_bootstrap_server_and_client() -> None:
    port = free_port(2)
    server_side = HttpBootstrapper(None, serve_addr="127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        first = await nursery.start(
            run_member, NodeConfig(bind_host="127.0.0.1", bind_port=port), server_side
        )
        assert server_side.bound_address is not None
        url = f"http://127.0.0.1:{server_side.bound_address[1]}/"
        server_ip, body = await http_get(url)
        assert server_ip == "127.0.0.1"
        assert json.loads(body) == [f"127.0.0.1:{port}"]

        joiner = await nursery.start(
            run_member,
            NodeConfig(bind_host="127.0.0.2", bind_port=port),
            HttpBootstrapper(url),
        )
        with trio.fail_after(5):
            await joiner.node.wait_ready()
        assert [c.node_id for c in joiner.node.peers()] == [first.node.node_id]
        nursery.cancel_scope.cancel()


async def test_http_bootstrap_failures_are_quiet() -> None:
    port = free_port()
    unreachable = HttpBootstrapper(f"http://127.0.0.1:{port}/", timeout=1.0)
    assert await unreachable.peers(("127.0.0.1", port)) == []
    with pytest.raises(ValueError):
        await http_get("https://127.0.0.1/")


async def test_http_bootstrap_fills_in_an_unknown_server_address() -> None:
    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        body = b'["0.0.0.0:4242"]'
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), answer, 0
        )
        http_port = listeners[0].socket.getsockname()[1]
        peers = await HttpBootstrapper(f"http://127.0.0.1:{http_port}/x").peers(("127.0.0.2", 1))
        assert peers == [("127.0.0.1", 4242)]
        nursery.cancel_scope.cancel()


async def test_bootstrap_skips_own_address() -> None:
    port = free_port()
    config = NodeConfig(
        bind_host="127.0.0.1", bind_port=port, bootstrap_backoff=0.05, request_timeout=0.1
    )
    async with DhtNode.open(config, StaticBootstrapper([f"127.0.0.1:{port}"])) as node:
        await trio.sleep(0.3)
        assert not node.ready()
        assert node.stats.requests_sent == 0
