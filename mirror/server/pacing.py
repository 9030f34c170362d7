"""Pacing what this node uploads to peers (`--peer-upload-rate`): one budget for every stream.

`TokenBucket` is the pure core (the caller passes the clock); `Pacer` is the
shell the send loops await after each chunk they sent.
"""

from __future__ import annotations

import trio

# With a pacer, files go out in chunks of this size, so the rate holds within ~10 ms.
PACED_CHUNK = 256 * 1024


class TokenBucket:
    """Token bucket with debt: `reserve(n)` returns how long to wait after sending `n` bytes.

    Reservations may exceed the burst and drive the balance negative; the debt
    is what later callers queue behind, so concurrent senders are served in
    reservation order and the long-run rate never exceeds `rate`.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def reserve(self, n: int, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Pacer:
    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self._burst = burst if burst is not None else max(rate / 20, 2 * PACED_CHUNK)
        self._bucket: TokenBucket | None = None

    async def sent(self, n: int) -> None:
        """`n` bytes went out: wait as long as the budget says."""
        now = trio.current_time()
        if self._bucket is None:
            self._bucket = TokenBucket(self.rate, self._burst, now)
        delay = self._bucket.reserve(n, now)
        if delay > 0:
            await trio.sleep(delay)
