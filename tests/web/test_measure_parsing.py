"""Measure Image Pull's pure parts, and `mirror watch`'s formatting."""

from __future__ import annotations

import io
import socket

import pytest
import trio

from mirror.cli import parse_args
from mirror.watch import ProgressLines, feed_lines, feed_url, format_event, run_watch
from mirror.web.measure import InvalidReference, choose_manifest, parse_reference


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.27", "docker.io/library/nginx:1.27"),
        ("team/app", "docker.io/team/app:latest"),
        ("ghcr.io/org/tool:v2", "ghcr.io/org/tool:v2"),
        ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
        ("localhost/app@sha256:" + "a" * 64, "localhost/app@sha256:" + "a" * 64),
    ],
)
def test_lenient_references(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


@pytest.mark.parametrize(
    "text", ["", "   ", "UPPER/case", "a b", "app:-bad", "app@sha256:short", "app@md5:00", 42]
)
def test_invalid_references_say_why(text: object) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    assert str(caught.value)


def test_index_resolves_to_this_platform_or_the_first_image() -> None:
    index = {
        "manifests": [
            {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }
    assert choose_manifest(index, ("linux", "amd64"))["digest"] == "sha256:amd"
    assert choose_manifest(index, ("linux", "riscv64"))["digest"] == "sha256:arm"


def test_watch_urls_and_lines() -> None:
    assert feed_url("http://127.0.0.1:9090") == "ws://127.0.0.1:9090/debug/web/ws"
    assert feed_url("127.0.0.2:9090/") == "ws://127.0.0.2:9090/debug/web/ws"
    with pytest.raises(ValueError):
        feed_url("ftp://host:1")
    event = {
        "time": 0.0,
        "kind": "blob",
        "method": "GET",
        "repository": "team/app",
        "reference": "sha256:" + "c" * 64,
        "registry": "docker.io",
        "client": "containerd",
        "result": "hit",
        "source": "peer",
        "peer": "127.0.0.2:5000",
        "status": 200,
        "bytes": 3 * 1024 * 1024,
        "duration": 0.0125,
    }
    line = format_event("127.0.0.1:9090", event)
    assert " hit " in line and "docker.io/team/app@cccccccccccc…" in line
    assert "from 127.0.0.2:5000" in line and "3.0 MiB" in line and "12ms" in line
    assert len(line) <= 100, line
    # A peer's request names the peer that was served, by its address.
    served = {**event, "client": "peer", "result": "local", "source": "local", "peer": "10.0.0.7"}
    line = format_event("127.0.0.1:9090", served)
    assert " served blob " in line and line.endswith(" to 10.0.0.7"), line
    measured = {**event, "client": "measure", "result": "local", "source": "local", "peer": ""}
    assert " measure:local blob " in format_event("127.0.0.1:9090", measured)
    # A node of the version before (a rolling upgrade) says `cache` only.
    older = {k: v for k, v in served.items() if k not in ("client", "result")}
    older["cache"] = "served"
    assert " served blob " in format_event("127.0.0.1:9090", older)


def test_watch_shows_long_transfers_every_ten_seconds() -> None:
    transfer = {
        "id": 7,
        "kind": "blob",
        "registry": "docker.io",
        "repository": "team/app",
        "reference": "sha256:" + "d" * 64,
        "client": "peer",
        "source": "local",
        "peer": "10.0.0.7",
        "length": 4 * 1024**3,
        "bytes": 1024**3,
        "seconds": 4.0,
    }
    progress = ProgressLines(every=10.0)
    message = {"type": "transfers", "transfers": [transfer]}
    node = "127.0.0.1:9090"
    assert feed_lines(node, message, progress, now=100.0) == []  # 4 s in: not yet
    later = {**transfer, "seconds": 12.0, "bytes": 2 * 1024**3}
    (line,) = feed_lines(node, {**message, "transfers": [later]}, progress, now=108.0)
    assert line.endswith(
        " 50% docker.io/team/app@dddddddddddd… 2.0 of 4.0 GiB 170.7 MiB/s to 10.0.0.7"
    ), line
    assert len(line) <= 100, line
    assert feed_lines(node, {**message, "transfers": [later]}, progress, now=115.0) == []
    assert len(feed_lines(node, {**message, "transfers": [later]}, progress, now=118.0)) == 1


async def test_watch_says_why_it_cannot_follow_a_node() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]

    async def wrong_port(stream: trio.SocketStream) -> None:  # an HTTP server, not a feed
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    out = io.StringIO()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, wrong_port, 0)
        http_port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(run_watch, [f"127.0.0.1:{closed}", f"127.0.0.1:{http_port}"], out)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    lines = out.getvalue().splitlines()
    assert any(f"127.0.0.1:{closed} -- cannot connect" in line for line in lines), lines
    assert any(
        f"127.0.0.1:{http_port} -- HTTP 404 instead of the feed: not a mirror's metrics port"
        in line
        for line in lines
    ), lines


def test_watch_takes_node_urls_as_positional_arguments() -> None:
    options = parse_args(["watch", "http://127.0.0.1:9090", "http://127.0.0.2:9090"], environ={})
    assert options.nodes == ("http://127.0.0.1:9090", "http://127.0.0.2:9090")
    from_env = parse_args(["watch"], environ={"NODES": "http://a:1,http://b:2"})
    assert from_env.nodes == ("http://a:1", "http://b:2")
