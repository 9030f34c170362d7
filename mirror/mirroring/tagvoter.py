"""The Trio shell around the tag vote (`tagvote.py`): attempts, channel, one timer.

Each attempt asks one provider for the tag (HEAD or GET, as the client did); a
GET's body is read whole and must hash to the digest the provider names for it,
else the attempt failed and the provider is reported as a liar. Every answer
that does not win is closed here.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from dht import Provider
from mirror.mirroring.ledger import ANSWER, BODY, WRONG_BYTES, body_failure, head_failure
from mirror.mirroring.peer import (
    PeerError,
    PeerResponse,
    PeerUnreachable,
    read_whole_body,
    request_head,
)
from mirror.mirroring.race import AttemptFailed, Start
from mirror.mirroring.racer import BUSY, FailureSink, HeadRequest, pump_providers, run_attempts
from mirror.mirroring.tagvote import Answered, Decided, TagVote, VoteEvent
from mirror.oci.digest import digest_matches, is_digest
from mirror.server.sendfailures import PeerStalled


@dataclass(slots=True)
class Ballot:
    peer: PeerResponse
    body: bytes  # empty for HEAD


class TagVoter:
    def __init__(
        self,
        vote: TagVote[Provider],
        providers: AsyncIterator[Provider],
        request: HeadRequest,
        *,
        stall_timeout: float,
        on_wrong_bytes: Callable[[Provider, PeerResponse, str], None],
        on_failure: FailureSink | None = None,
    ) -> None:
        self._on_failure = on_failure
        self._vote = vote
        self._providers = providers
        self._request = request
        self._stall_timeout = stall_timeout
        self._on_wrong_bytes = on_wrong_bytes
        self._send, self._receive = trio.open_memory_channel[VoteEvent[Provider]](math.inf)
        self._ballots: dict[Provider, Ballot] = {}

    async def run(self) -> tuple[Decided[Provider], Ballot | None]:
        """Vote to the end; the winner's answer (if any) is the caller's to close."""
        return await run_attempts(
            lambda: pump_providers(self._providers, self._send),
            self._drive,
            lambda decided: decided.winner,
            self._ballots,
            lambda ballot: ballot.peer.close(),
        )

    async def _drive(self, nursery: trio.Nursery) -> Decided[Provider]:
        while True:
            command = self._vote.next_command(trio.current_time())
            if isinstance(command, Decided):
                return command
            if isinstance(command, Start):
                nursery.start_soon(self._attempt, command.provider)
                continue
            with trio.move_on_at(command.deadline):
                event = await self._receive.receive()
                self._vote.receive(event, trio.current_time())

    async def _attempt(self, provider: Provider) -> None:
        request = self._request
        try:
            peer = await request_head(
                provider.host,
                provider.registry_port,
                request.method,
                request.target,
                request.headers,
            )
        except (PeerError, OSError) as exc:
            self._failed(provider, head_failure(exc))
            self._send.send_nowait(
                AttemptFailed(provider, str(exc), isinstance(exc, PeerUnreachable))
            )
            return
        reason = ANSWER
        try:
            request.validate(peer)
            digest = peer.header("docker-content-digest") or ""
            if peer.status != 200 or not is_digest(digest):
                raise PeerError(f"no usable answer for the tag (status {peer.status})")
            body = b""
            if request.method == "GET":
                reason = BODY
                body = await read_whole_body(peer, self._stall_timeout)
                if not digest_matches(digest, body):
                    reason = WRONG_BYTES  # reported through on_wrong_bytes
                    self._on_wrong_bytes(provider, peer, digest)
                    raise PeerError(f"the body does not hash to {digest}")
        except (PeerError, PeerStalled, OSError) as exc:
            peer.close()
            if reason == BODY:
                reason = body_failure(exc)
            if peer.status != BUSY and reason != WRONG_BYTES:
                self._failed(provider, reason)
            self._send.send_nowait(AttemptFailed(provider, str(exc)))
            return
        except BaseException:
            peer.close()
            raise
        self._ballots[provider] = Ballot(peer, body)
        self._send.send_nowait(Answered(provider, digest))

    def _failed(self, provider: Provider, reason: str) -> None:
        if self._on_failure is not None:
            self._on_failure(provider, reason)
