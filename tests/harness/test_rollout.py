from __future__ import annotations

import pytest

from bench.harness.rollout import (
    create_batches,
    max_unavailable,
    update_batches,
    update_improvement_bound,
)


@pytest.mark.parametrize(
    ("value", "nodes", "expected"),
    [
        ("20%", 5, 1),
        ("20%", 50, 10),
        ("20%", 3, 1),  # 0.6 rounds up: a rollout always progresses
        ("25%", 10, 3),  # 2.5 rounds up, as the DaemonSet controller does
        ("30%", 10, 3),  # 3.0000000000000004 in floats is still 3
        ("100%", 4, 4),
        ("2", 5, 2),
        ("10", 5, 5),  # clamped to the node count
    ],
)
def test_max_unavailable(value: str, nodes: int, expected: int) -> None:
    assert max_unavailable(value, nodes) == expected


@pytest.mark.parametrize("value", ["0", "0%", "150%", "-1", "x"])
def test_max_unavailable_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        max_unavailable(value, 5)


def test_create_is_one_batch_of_every_node() -> None:
    assert create_batches(["a", "b", "c"]) == [["a", "b", "c"]]
    assert create_batches([]) == []


def test_rolling_update_of_five_nodes_is_one_at_a_time() -> None:
    assert update_batches([0, 1, 2, 3, 4]) == [[0], [1], [2], [3], [4]]


def test_rolling_update_batches_in_order_with_a_short_last_batch() -> None:
    nodes = list(range(10))
    assert update_batches(nodes, "20%") == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert update_batches(list(range(7)), "30%") == [[0, 1, 2], [3, 4, 5], [6]]
    flat = [n for batch in update_batches(list(range(50)), "20%") for n in batch]
    assert flat == list(range(50))


def test_update_improvement_bound() -> None:
    assert update_improvement_bound(5, 1) == pytest.approx(80.0)
    assert update_improvement_bound(50, 10) == pytest.approx(80.0)
    assert update_improvement_bound(50, 1) == pytest.approx(98.0)
    assert update_improvement_bound(1, 1) == 0.0
