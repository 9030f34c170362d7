"""Which nodes pull when: a new DaemonSet (all at once) and a rolling update (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

DEFAULT_MAX_UNAVAILABLE = "20%"


def max_unavailable(value: str, nodes: int) -> int:
    """A DaemonSet's `maxUnavailable` ("20%" or "2") as a node count.

    Percentages round up, as the DaemonSet controller does, so that a rollout
    always makes progress; the result is clamped to 1..nodes.
    """
    text = value.strip()
    if text.endswith("%"):
        percent = float(text[:-1])
        if not 0 < percent <= 100:
            raise ValueError(f"maxUnavailable percentage out of range: {value!r}")
        count = math.ceil(round(percent * nodes / 100, 9))
    else:
        count = int(text)
        if count < 1:
            raise ValueError(f"maxUnavailable must be at least 1: {value!r}")
    return max(1, min(count, nodes))


def create_batches(nodes: Sequence[T]) -> list[list[T]]:
    """A new DaemonSet: every node starts its pod, and its pull, at once."""
    return [list(nodes)] if nodes else []


def update_batches(nodes: Sequence[T], unavailable: str = DEFAULT_MAX_UNAVAILABLE) -> list[list[T]]:
    """A rolling update: `unavailable` nodes at a time, in order, each batch after the last."""
    if not nodes:
        return []
    size = max_unavailable(unavailable, len(nodes))
    return [list(nodes[i : i + size]) for i in range(0, len(nodes), size)]


def update_improvement_bound(nodes: int, first_batch: int) -> float:
    """The best average update improvement possible, in percent.

    The first batch has no peer holding the new image and pulls from the
    upstream exactly as without a mirror; even if every later pull took no
    time at all, the average only drops by the share of the other nodes.
    """
    if nodes <= 0:
        raise ValueError("no nodes")
    return 100.0 * (nodes - min(first_batch, nodes)) / nodes
