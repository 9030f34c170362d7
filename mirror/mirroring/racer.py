"""The Trio shell around the race core (`race.py`): attempts, channel, one timer.

One loop asks the core what to do: `Start` opens an attempt (a head request) in
the race's nursery under its own cancel scope, `Abandon` cancels that scope,
`WakeAt` waits on the event channel (provider lookups and attempts write to it)
until its deadline, `Done` ends the race and cancels whatever still runs. Every
head that arrived but did not win is closed here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from dht import Provider
from mirror.mirroring.ledger import TIMEOUT, head_failure
from mirror.mirroring.peer import PeerError, PeerResponse, PeerUnreachable, request_head
from mirror.mirroring.race import (
    Abandon,
    AttemptFailed,
    Done,
    Exhausted,
    HeadReady,
    ProviderFound,
    Race,
    RaceEvent,
    Start,
)

D = TypeVar("D")  # how a core ended
A = TypeVar("A")  # an attempt's answer

log = logging.getLogger("mirror.mirroring")

Validator = Callable[[PeerResponse], None]
# Told of each attempt that failed (not a busy answer): the provider, and why (ledger.py).
FailureSink = Callable[[Provider, str], None]
BUSY = 503


@dataclass(frozen=True, slots=True)
class HeadRequest:
    """What each attempt sends, and what makes an answer acceptable (else PeerError)."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    validate: Validator


class RaceShell:
    def __init__(
        self,
        race: Race[Provider],
        providers: AsyncIterator[Provider],
        request: HeadRequest,
        *,
        on_failure: FailureSink | None = None,
    ) -> None:
        self._on_failure = on_failure
        self._race = race
        self._providers = providers
        self._request = request
        self._send, self._receive = trio.open_memory_channel[RaceEvent[Provider]](math.inf)
        self._attempts: dict[Provider, trio.CancelScope] = {}
        self._heads: dict[Provider, PeerResponse] = {}

    async def run(self) -> tuple[Done[Provider], PeerResponse | None]:
        """Race to the end; the winner's response (if any) is the caller's to close."""
        return await run_attempts(
            lambda: pump_providers(self._providers, self._send),
            self._drive,
            lambda done: done.winner,
            self._heads,
            lambda peer: peer.close(),
        )

    async def _drive(self, nursery: trio.Nursery) -> Done[Provider]:
        while True:
            command = self._race.next_command(trio.current_time())
            if isinstance(command, Done):
                return command
            if isinstance(command, Start):
                scope = self._attempts[command.provider] = trio.CancelScope()
                nursery.start_soon(self._attempt, command.provider, scope)
            elif isinstance(command, Abandon):
                self._attempts[command.provider].cancel()
                _log_failure(command.provider, "no response head in time")
                if self._on_failure is not None:
                    self._on_failure(command.provider, TIMEOUT)
            else:
                with trio.move_on_at(command.deadline) as timer:
                    event = await self._receive.receive()
                    self._race.receive(event, trio.current_time())
                if timer.cancelled_caught:
                    await self._catch_up()

    async def _catch_up(self) -> None:
        """The timer fired: first let the tasks already runnable report. A process
        starved of CPU past a 20 ms resolve timeout finds its timer and the pump's
        news (a provider known from the start, a hint) due in the same turn, and a
        provider that was already known must not be a miss."""
        await trio.lowlevel.checkpoint()
        while True:
            try:
                event = self._receive.receive_nowait()
            except trio.WouldBlock:
                return
            self._race.receive(event, trio.current_time())

    async def _attempt(self, provider: Provider, scope: trio.CancelScope) -> None:
        request = self._request
        with scope:
            try:
                peer = await request_head(
                    provider.host,
                    provider.registry_port,
                    request.method,
                    request.target,
                    request.headers,
                )
            except (PeerError, OSError) as exc:
                self._failed(provider, exc)
                return
            try:
                request.validate(peer)
            except PeerError as exc:
                peer.close()
                self._failed(provider, exc, busy=peer.status == BUSY)
                return
            self._heads[provider] = peer
            self._send.send_nowait(HeadReady(provider))

    def _failed(self, provider: Provider, exc: Exception, *, busy: bool = False) -> None:
        _log_failure(provider, str(exc))
        if self._on_failure is not None and not busy:
            self._on_failure(provider, head_failure(exc))
        unreachable = isinstance(exc, PeerUnreachable)
        self._send.send_nowait(AttemptFailed(provider, str(exc), unreachable))


async def pump_providers(
    providers: AsyncIterator[Provider],
    send: trio.MemorySendChannel[ProviderFound[Provider] | Exhausted],
) -> None:
    """Every provider found, then the end of the lookup, as a core's events."""
    async for provider in providers:
        send.send_nowait(ProviderFound(provider))
    send.send_nowait(Exhausted())


async def run_attempts(
    pump: Callable[[], Awaitable[None]],
    drive: Callable[[trio.Nursery], Awaitable[D]],
    winner_of: Callable[[D], Provider | None],
    answers: dict[Provider, A],
    close: Callable[[A], None],
) -> tuple[D, A | None]:
    """A shell's life: the lookup pumped in, its core driven to the end (attempts start
    in the nursery), then every answer but the winner's closed. The winner's is the
    caller's to close."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            end = await drive(nursery)
            nursery.cancel_scope.cancel()
        winner = winner_of(end)
        won = answers.pop(winner) if winner is not None else None
    finally:
        for answer in answers.values():
            close(answer)
    return end, won


def _log_failure(provider: Provider, error: str) -> None:
    log.debug(
        "peer attempt failed",
        extra={"peer": f"{provider.host}:{provider.registry_port}", "error": error},
    )
