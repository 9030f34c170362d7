"""What the mirror tells about each peer it asks: the bytes it got, and each failure.

The per-peer metrics (`mirror_peer_received_bytes_total`,
`mirror_peer_failures_total`) are fed from here; a peer is named by its host.
"""

from __future__ import annotations

from typing import Protocol

import trio

from mirror.mirroring.peer import PeerUnreachable
from mirror.server.sendfailures import PeerStalled

# Why a request to a peer failed (the `reason` label).
UNREACHABLE = "unreachable"  # connection refused or no route: nobody serves there
TIMEOUT = "timeout"  # no response head in time, or a body that stalled or trickled
ANSWER = "answer"  # a head this node cannot use: an error status, malformed, cut short
BODY = "body"  # the body broke off
WRONG_BYTES = "wrong_bytes"  # the bytes did not hash to the digest asked for
REASONS = (UNREACHABLE, TIMEOUT, ANSWER, BODY, WRONG_BYTES)


class PeerLedger(Protocol):
    def peer_received(self, host: str, count: int) -> None: ...

    def peer_failed(self, host: str, reason: str) -> None: ...


class NoLedger:
    def peer_received(self, host: str, count: int) -> None:
        pass

    def peer_failed(self, host: str, reason: str) -> None:
        pass


def head_failure(exc: BaseException) -> str:
    """The reason of a request that got no usable response head."""
    if isinstance(exc, PeerUnreachable):
        return UNREACHABLE
    return TIMEOUT if isinstance(exc, PeerStalled | trio.TooSlowError) else ANSWER


def body_failure(exc: BaseException) -> str:
    """The reason of a body that broke off after its head."""
    return TIMEOUT if isinstance(exc, PeerStalled | trio.TooSlowError) else BODY
