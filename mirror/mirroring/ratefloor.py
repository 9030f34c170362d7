"""The least a peer must send while relaying a body (pure).

The stall timeout bounds one wait for one read; a peer sending a few bytes every
few seconds never trips it and would hold the relay forever. A `RateFloor` wants
at least `min_rate` bytes/s over each `window` seconds spent waiting for the
peer: one that falls short is replaced through `Range`, as a peer that broke is
(relay.py).

Only time spent waiting for the peer counts, never time spent waiting for the
client: a slow client (containerd writing to a slow disk) holds the relay back
through backpressure, and that must not be blamed on the peer.
"""

from __future__ import annotations


class RateFloor:
    def __init__(self, min_rate: float, window: float) -> None:
        self.min_rate = min_rate
        self.window = window
        self.quota = min_rate * window
        self._got = 0
        self._waited = 0.0

    def received(self, count: int) -> None:
        self._got += count

    def waited(self, seconds: float) -> None:
        self._waited += max(seconds, 0.0)

    def met(self) -> bool:
        """False once a window of waiting ended short of its quota."""
        if self.quota <= 0:
            return True
        while self._waited >= self.window:
            if self._got < self.quota:
                return False
            self._got = 0  # no credit carried over: a burst does not buy a trickle
            self._waited -= self.window
        return True

    def wait_limit(self, stall: float) -> float:
        """How long the next wait for the peer may last: the stall timeout, or less
        when the window's waiting ends first with its quota not yet met."""
        if self.quota <= 0 or self._got >= self.quota:
            return stall
        return max(min(stall, self.window - self._waited), 0.0)
