"""Kubelet `Pulled` events, from fixtures shaped like `kubectl get events -o json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.harness.events import (
    EventError,
    kubelet_pulls,
    parse_go_duration,
    parse_pull_message,
    pulls_of,
)

FIXTURES = Path(__file__).parent / "fixtures"
REG = "registry.example.com:5000/benchmark"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1.234s", 1.234),
        ("987ms", 0.987),
        ("187.5ms", 0.1875),
        ("1m2.512847213s", 62.512847213),
        ("1h2m3s", 3723.0),
        ("850µs", 0.00085),
        ("850us", 0.00085),
        ("12ns", 1.2e-8),
        ("0s", 0.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1.2", "s", "1.2x", "1s junk", "-1s"])
def test_not_go_durations(text: str) -> None:
    with pytest.raises(EventError):
        parse_go_duration(text)


def test_pull_message_since_kubernetes_1_28_and_1_30() -> None:
    assert parse_pull_message(
        'Successfully pulled image "a/b:v1" in 1.402s (2.011s including waiting)'
    ) == ("a/b:v1", pytest.approx(1.402), pytest.approx(2.011), None)
    assert parse_pull_message(
        'Successfully pulled image "a/b:v1" in 204ms (204ms including waiting). '
        "Image size: 10498633 bytes."
    ) == ("a/b:v1", pytest.approx(0.204), pytest.approx(0.204), 10498633)


def test_messages_that_are_no_pull() -> None:
    assert parse_pull_message('Container image "alpine:3.20" already present on machine') is None
    assert parse_pull_message('Pulling image "a/b:v1"') is None


def test_pulls_of_a_create_and_an_update_from_one_event_list() -> None:
    pulls = kubelet_pulls(fixture("events-10MB-1.json"))
    # Ten benchmark pulls and another workload's; "already present" and non-pod events drop out.
    assert len(pulls) == 11
    created = pulls_of(pulls, f"{REG}:v1-10MB-1", "mirror-bench-10mb-1-")
    updated = pulls_of(pulls, f"{REG}:v2-10MB-1", "mirror-bench-10mb-1-")
    assert [p.duration for p in created] == pytest.approx([1.254, 1.386, 1.19, 1.402, 0.987])
    assert [p.duration for p in updated] == pytest.approx([1.312, 0.204, 0.1875, 0.231, 0.176])
    assert created[3].waiting == pytest.approx(2.011)
    assert {p.size for p in created} == {10498633}
    assert [p.node for p in updated] == [f"aks-bench-38791457-vmss00000{i}" for i in range(5)]
    assert all(p.pod.startswith("mirror-bench-10mb-1-") for p in (*created, *updated))


def test_older_kubelet_messages_and_repeated_events() -> None:
    pulls = kubelet_pulls(fixture("events-k8s-1.26.json"))
    image = "ghcr.io/spegel-org/benchmark:v1-1GB-4"
    chosen = pulls_of(pulls, image)
    # The repeated event of the first pod counts once: the earlier one.
    assert [p.pod for p in chosen] == [
        "mirror-bench-1gb-4-6tq2z",
        "mirror-bench-1gb-4-b8v4k",
        "mirror-bench-1gb-4-m2c7d",
    ]
    assert [p.duration for p in chosen] == pytest.approx([62.512847213, 58.004512369, 64.75])
    assert all(p.waiting is None and p.size is None for p in chosen)
    assert [p.node for p in chosen] == ["kind-worker", "kind-worker2", "kind-worker3"]


def test_a_bare_list_of_events_works_too() -> None:
    items = fixture("events-10MB-1.json")["items"]
    assert len(kubelet_pulls(items)) == 11
