"""Shared pytest set-up: `async def` tests run under `trio.run`."""

from __future__ import annotations

import functools
import inspect

import pytest
import trio
import trio.testing


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    clock = kwargs.get("mock_clock")
    trio.run(functools.partial(pyfuncitem.obj, **kwargs), clock=clock)
    return True


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    """A MockClock that jumps over idle time; a test that asks for it runs on it."""
    return trio.testing.MockClock(autojump_threshold=0)
