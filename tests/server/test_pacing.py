"""The peer upload budget: one rate for every stream together (autojump fake clock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from mirror.server.pacing import Pacer


async def _send(pacer: Pacer, total: int, chunk: int) -> None:
    for _ in range(total // chunk):
        await pacer.sent(chunk)


async def test_one_stream_is_held_to_the_rate(mock_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(1_000_000, burst=100_000)
    start = trio.current_time()
    await _send(pacer, 5_000_000, 100_000)
    assert trio.current_time() - start == pytest.approx(4.9, abs=0.05)


async def test_streams_share_one_budget(mock_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(1_000_000, burst=100_000)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(_send, pacer, 1_000_000, 50_000)
    assert trio.current_time() - start == pytest.approx(3.9, abs=0.1)
