"""The verified splice mover (`tee_verified`) over real loopback TCP connections: the
bytes that reach the client, the hash that proves them, and what a failure leaves."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest
import trio

from mirror.mirroring import movers
from mirror.mirroring.movers import (
    TAIL,
    DigestMismatch,
    PeerFailure,
    PeerSide,
    tee_verified,
)
from tests.loopback import tcp_pair

BODY = os.urandom(5 * 1024 * 1024 + 4321)
DIGEST_HEX = hashlib.sha256(BODY).hexdigest()


async def _run(
    sent: bytes,
    *,
    early: bytes = b"",
    cut: bool = False,
) -> tuple[bytes, int | BaseException, hashlib._Hash]:
    """Relay `sent` (after `early`, as if read with the head) through `tee_verified`
    and return what the client received, the mover's result or exception, and the
    hasher. `cut`: the peer closes after `sent` though the body is longer."""
    hasher = hashlib.sha256()
    peer_out, peer_in = await tcp_pair()
    client_out, client_in = await tcp_pair()
    received = bytearray()
    result: list[int | BaseException] = []
    length = len(BODY) if cut else len(early) + len(sent)

    async def peer() -> None:
        view = memoryview(sent)
        while view:
            view = view[await peer_out.send(view[: 256 * 1024]) :]
        peer_out.close()

    async def client() -> None:
        while chunk := await client_in.recv(1 << 20):
            received.extend(chunk)

    async def relay() -> None:
        try:
            result.append(
                await tee_verified(
                    PeerSide(peer_in, 5.0, None),
                    client_out,
                    early,
                    length,
                    hasher,
                    DIGEST_HEX,
                    5.0,
                )
            )
        except (DigestMismatch, PeerFailure) as exc:
            result.append(exc)
        client_out.close()
        peer_in.close()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            nursery.start_soon(client)
            nursery.start_soon(relay)
    return bytes(received), result[0], hasher


def _counting_tee(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real: Callable[[int, int, int], int] = movers._tee

    def counted(source: int, dest: int, count: int) -> int:
        got = real(source, dest, count)
        calls.append(got)
        return got

    monkeypatch.setattr(movers, "_tee", counted)
    return calls


async def test_a_whole_body_is_spliced_and_proven(monkeypatch: pytest.MonkeyPatch) -> None:
    teed = _counting_tee(monkeypatch)
    received, result, hasher = await _run(BODY)
    assert received == BODY and result == len(BODY)
    assert hasher.hexdigest() == DIGEST_HEX
    # Everything before the held-back tail went through the tee.
    assert sum(teed) == len(BODY) - TAIL


async def test_bytes_read_with_the_head_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    teed = _counting_tee(monkeypatch)
    received, result, _ = await _run(BODY[4000:], early=BODY[:4000])
    assert received == BODY and result == len(BODY)
    assert sum(teed) == len(BODY) - TAIL - 4000


async def test_a_wrong_byte_early_in_the_body_holds_back_its_end() -> None:
    wrong = bytearray(BODY)
    wrong[1000] ^= 0xFF
    received, result, _ = await _run(bytes(wrong))
    assert isinstance(result, DigestMismatch)
    assert len(received) == result.moved < len(BODY)
    assert len(BODY) - len(received) <= TAIL


async def test_a_peer_that_breaks_off_leaves_the_hash_at_what_the_client_got() -> None:
    received, result, hasher = await _run(BODY[: 3 * 1024 * 1024 + 5], cut=True)
    assert isinstance(result, PeerFailure)
    assert result.moved == len(received) > 0
    assert received == BODY[: len(received)]
    # A resume goes on hashing from here: the hash holds exactly the bytes delivered.
    assert hasher.hexdigest() == hashlib.sha256(received).hexdigest()


async def test_a_peer_that_breaks_off_in_the_tail_is_counted_too() -> None:
    received, result, hasher = await _run(BODY[: len(BODY) - 100], cut=True)
    assert isinstance(result, PeerFailure)
    assert result.moved == len(received) >= len(BODY) - TAIL
    assert hasher.hexdigest() == hashlib.sha256(received).hexdigest()


async def test_without_tee_the_body_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(movers, "_TEE", None)
    received, result, hasher = await _run(BODY)
    assert received == BODY and result == len(BODY)
    assert hasher.hexdigest() == DIGEST_HEX
