"""Measure Image Pull's pure parts, and `mirror watch`'s formatting."""

from __future__ import annotations

import pytest

from mirror.cli import parse_args
from mirror.watch import feed_url, format_event
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
    line = format_event(
        "127.0.0.1:9090",
        {
            "time": 0.0,
            "kind": "blob",
            "method": "GET",
            "repository": "team/app",
            "reference": "sha256:" + "c" * 64,
            "registry": "docker.io",
            "cache": "hit",
            "source": "peer",
            "peer": "127.0.0.2:5000",
            "status": 200,
            "bytes": 3 * 1024 * 1024,
            "duration": 0.0125,
        },
    )
    assert "hit" in line and "docker.io/team/app@sha256:cccc" in line
    assert "from 127.0.0.2:5000" in line and "3.0 MiB" in line and "12.5 ms" in line


def test_watch_takes_node_urls_as_positional_arguments() -> None:
    options = parse_args(["watch", "http://127.0.0.1:9090", "http://127.0.0.2:9090"], environ={})
    assert options.nodes == ("http://127.0.0.1:9090", "http://127.0.0.2:9090")
    from_env = parse_args(["watch"], environ={"NODES": "http://a:1,http://b:2"})
    assert from_env.nodes == ("http://a:1", "http://b:2")
