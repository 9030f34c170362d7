"""How late the event loop wakes a sleeper: the delay every request and every
datagram waits behind whatever hogs the loop (a stall here is a stall for all)."""

from __future__ import annotations

from collections.abc import Callable

import trio

INTERVAL = 0.1


async def watch_loop_lag(observe: Callable[[float], None], interval: float = INTERVAL) -> None:
    """Sleep `interval` again and again; observe how late each wake-up came."""
    while True:
        asleep = trio.current_time()
        await trio.sleep(interval)
        observe(max(trio.current_time() - asleep - interval, 0.0))
