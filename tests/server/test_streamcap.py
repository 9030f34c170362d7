"""The per-node stream cap: counting, and the leaf streams it ends to make room."""

from __future__ import annotations

import pytest
import trio

from mirror.server.streamcap import Preempted, StreamCap


class WaitingBody:
    """A body that sends until cancelled."""

    length = 10

    def __init__(self) -> None:
        self.closed = False

    async def send(self, sock: trio.socket.SocketType, stall_timeout: float) -> None:
        await trio.sleep_forever()

    def close(self) -> None:
        self.closed = True


def test_a_leaf_is_named_only_when_the_cap_is_full_and_the_newest_first() -> None:
    cap = StreamCap(3)
    for name in ("old", "new"):
        assert cap.acquire("a")
        cap.leaf_started("a", name)
    assert cap.leaf_to_end("a") is None  # room left: nothing to end
    assert cap.acquire("b")
    assert cap.leaf_to_end("a") == "new"
    assert cap.leaf_to_end("b") is None  # no leaf of that blob
    cap.leaf_ended("a", "new")
    assert cap.leaf_to_end("a") == "old"


def test_make_room_frees_a_slot_and_a_closed_leaf_releases_once() -> None:
    cap = StreamCap(1)
    assert cap.acquire("a")
    leaf = cap.hold("a", WaitingBody(), passes_on=False)
    assert cap.full and cap.make_room("a")
    assert not cap.full and cap.preempted == 1 and leaf.released
    assert cap.acquire("a")  # the peer that passes it on takes the slot
    leaf.close()
    assert len(cap) == 1  # the ended leaf's close releases nothing twice
    assert not cap.make_room("a")  # not full: nothing ended


def test_a_stream_to_a_peer_that_passes_the_blob_on_is_never_ended() -> None:
    cap = StreamCap(1)
    assert cap.acquire("a")
    cap.hold("a", WaitingBody(), passes_on=True)
    assert not cap.make_room("a") and cap.full


async def test_an_ended_leaf_stops_sending_with_preempted() -> None:
    cap = StreamCap(1)
    assert cap.acquire("a")
    leaf = cap.hold("a", WaitingBody(), passes_on=False)
    client, server = trio.socket.socketpair()
    with client, server:
        async with trio.open_nursery() as nursery:

            async def end_it() -> None:
                await trio.sleep(0.01)
                assert cap.make_room("a")

            nursery.start_soon(end_it)
            with trio.fail_after(5), pytest.raises(Preempted):
                await leaf.send(server, 5.0)
