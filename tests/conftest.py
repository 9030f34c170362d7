"""Shared pytest set-up. `async def` tests and fixtures run under pytest-trio (trio_mode)."""

from __future__ import annotations

import pytest
import trio.testing


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    """A MockClock that jumps over idle time; a test that asks for it runs on it."""
    return trio.testing.MockClock(autojump_threshold=0)
