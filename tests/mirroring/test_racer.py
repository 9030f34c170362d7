"""The race's Trio shell when the process is starved of CPU: a provider that was
ready when the resolve timer fired is still tried (CI saw a manifest lost that way
on a loaded 2-core machine: a pull with the upstream down then failed)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio
import trio.testing

from dht import Provider
from mirror.mirroring.peer import PeerResponse
from mirror.mirroring.race import Race, RaceLimits
from mirror.mirroring.racer import HeadRequest, RaceShell

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


async def _answering_peer(nursery: trio.Nursery) -> int:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    async def serve() -> None:
        with listener:
            while True:
                sock, _ = await listener.accept()
                with sock, contextlib.suppress(OSError):
                    await sock.recv(65536)
                    await sock.send(HEAD)
                    await trio.sleep_forever()

    nursery.start_soon(serve)
    return int(listener.getsockname()[1])


def _accept(peer: PeerResponse) -> None:
    pass


async def test_a_provider_ready_when_the_timer_fires_is_still_tried(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = await _answering_peer(nursery)
        provider = Provider(node_id=b"p" * 16, host="127.0.0.1", udp_port=1, registry_port=port)
        ready = trio.Event()

        async def providers() -> AsyncIterator[Provider]:
            await ready.wait()
            yield provider

        limits = RaceLimits(resolve_timeout=0.020)
        race = Race[Provider](limits, trio.current_time())
        shell = RaceShell(race, providers(), HeadRequest("GET", "/x", [], _accept))
        outcome: list[object] = []
        finished = trio.Event()

        async def run() -> None:
            outcome.append(await shell.run())
            finished.set()

        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        # The OS kept the process off the CPU past the timer; the provider's news
        # arrives in the same turn as the timeout.
        mock_clock.jump(1.0)
        ready.set()
        await finished.wait()
        done, peer = outcome[0]  # type: ignore[misc]
        assert done.winner == provider, done
        assert peer is not None
        peer.close()
        nursery.cancel_scope.cancel()
