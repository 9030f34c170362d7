"""Which digest a tag names: the vote's core on fake time, and the vote over real
loopback sockets with one provider naming another (self-consistent) image."""

from __future__ import annotations

import hashlib
import json

import pytest
import trio

from mirror.mirroring.mirror import MirrorEvent, MirrorSettings, PeerMirror
from mirror.mirroring.providers import ProviderCache
from mirror.mirroring.race import AttemptFailed, Exhausted, ProviderFound, Start, WakeAt
from mirror.mirroring.tagvote import Answered, Decided, TagVote, VoteLimits
from tests.mirroring.test_race import ProvidersByKey, _provider, _scripted_peer
from tests.mirroring.test_wrong_bytes import MANIFEST_TYPE, _answer, _fetch_manifest, _mirror

LIMITS = VoteLimits(voters=3, grace=0.25, resolve_timeout=0.125, retries=3, budget=4.0)


def _vote(**changes: float) -> TagVote[str]:
    from dataclasses import replace

    return TagVote(replace(LIMITS, **changes), 0.0)


def _start_all(vote: TagVote[str], now: float) -> list[str]:
    started = []
    while isinstance(command := vote.next_command(now), Start):
        started.append(command.provider)
    return started


def test_up_to_the_voters_are_asked_at_once() -> None:
    vote = _vote()
    for name in "abcd":
        vote.receive(ProviderFound(name), 0.0)
    assert _start_all(vote, 0.0) == ["a", "b", "c"]


def test_the_digest_most_answers_name_wins_even_when_it_came_last() -> None:
    vote = _vote()
    for name in "abc":
        vote.receive(ProviderFound(name), 0.0)
    _start_all(vote, 0.0)
    vote.receive(Answered("a", "sha256:planted"), 0.01)
    vote.receive(Answered("b", "sha256:real"), 0.02)
    assert vote.next_command(0.02) == WakeAt(0.26)
    vote.receive(Answered("c", "sha256:real"), 0.03)
    assert vote.next_command(0.03) == Decided("b", "sha256:real", 2, 1)


def test_a_tie_goes_to_the_earliest_answer() -> None:
    vote = _vote()
    for name in "ab":
        vote.receive(ProviderFound(name), 0.0)
    vote.receive(Exhausted(), 0.0)
    _start_all(vote, 0.0)
    vote.receive(Answered("b", "sha256:two"), 0.01)
    vote.receive(Answered("a", "sha256:one"), 0.02)
    assert vote.next_command(0.02) == Decided("b", "sha256:two", 1, 1)


def test_one_provider_and_nobody_else_to_ask_decides_at_once() -> None:
    vote = _vote()
    vote.receive(ProviderFound("a"), 0.0)
    vote.receive(Exhausted(), 0.0)
    _start_all(vote, 0.0)
    vote.receive(Answered("a", "sha256:only"), 0.01)
    assert vote.next_command(0.01) == Decided("a", "sha256:only", 1, 0)


def test_the_others_have_the_grace_after_the_first_answer() -> None:
    vote = _vote()
    for name in "abc":
        vote.receive(ProviderFound(name), 0.0)
    _start_all(vote, 0.0)
    vote.receive(Answered("a", "sha256:first"), 0.5)
    assert vote.next_command(0.5) == WakeAt(0.75)
    assert vote.next_command(0.75) == Decided("a", "sha256:first", 1, 0)


def test_a_failed_voter_is_replaced_within_the_retries() -> None:
    vote = _vote(retries=2)
    for name in "abcdef":
        vote.receive(ProviderFound(name), 0.0)
    _start_all(vote, 0.0)
    vote.receive(AttemptFailed("a", "404"), 0.01)
    assert _start_all(vote, 0.01) == ["d"]
    vote.receive(AttemptFailed("b", "404"), 0.02)
    assert _start_all(vote, 0.02) == []  # retries spent: nobody new
    vote.receive(Answered("c", "sha256:x"), 0.03)
    vote.receive(Answered("d", "sha256:x"), 0.04)
    assert vote.next_command(0.04) == Decided("c", "sha256:x", 2, 0)


def test_nobody_answering_is_a_miss() -> None:
    vote = _vote()
    assert vote.next_command(0.0) == WakeAt(0.125)
    assert vote.next_command(0.125) == Decided(None)
    vote = _vote()
    vote.receive(ProviderFound("a"), 0.0)
    _start_all(vote, 0.0)
    assert vote.next_command(4.0) == Decided(None)  # the budget


def _image(architecture: str) -> tuple[bytes, str]:
    config = "sha256:" + hashlib.sha256(architecture.encode()).hexdigest()
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config},
            "layers": [],
        }
    ).encode()
    return body, "sha256:" + hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_one_provider_naming_another_image_is_outvoted(method: str) -> None:
    real, real_digest = _image("amd64")
    planted, planted_digest = _image("planted")
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        # Self-consistent: the planted body does hash to the digest its peer names.
        liar = await _scripted_peer(
            nursery, _answer(planted, planted_digest, MANIFEST_TYPE), planted
        )
        honest = [
            await _scripted_peer(nursery, _answer(real, real_digest, MANIFEST_TYPE), real)
            for _ in range(2)
        ]
        mirror = await _mirror(nursery, [liar, *honest], events)
        response = await _fetch_manifest(mirror, "v1", method)
        assert response is not None
        headers = dict(response.headers)
        assert headers["Docker-Content-Digest"] == real_digest
        assert headers["X-Mirror-Peer"] != f"127.0.0.1:{liar}"
        if method == "GET":
            assert response.body == real
        nursery.cancel_scope.cancel()
    assert [(event.outcome, event.tag_disagreements) for event in events] == [("peer", 1)]


async def test_providers_that_agree_are_no_disagreement() -> None:
    real, real_digest = _image("amd64")
    events: list[MirrorEvent] = []
    async with trio.open_nursery() as nursery:
        peers = [
            await _scripted_peer(nursery, _answer(real, real_digest, MANIFEST_TYPE), real)
            for _ in range(3)
        ]
        mirror = await _mirror(nursery, peers, events)
        response = await _fetch_manifest(mirror, "v1")
        assert response is not None and response.body == real
        nursery.cancel_scope.cancel()
    assert [(event.outcome, event.tag_disagreements) for event in events] == [("peer", 0)]


async def test_the_peer_that_resolved_a_tag_serves_its_manifest_without_a_lookup() -> None:
    """containerd resolves with HEAD, then GETs the manifest by digest at once: the DHT
    need not know the digest yet (a loaded node's lookup outlasts the resolve timeout)."""
    real, real_digest = _image("amd64")
    async with trio.open_nursery() as nursery:
        peer = await _scripted_peer(nursery, _answer(real, real_digest, MANIFEST_TYPE), real)
        providers = ProvidersByKey({"example.com/team/app:v1": [_provider(peer, b"p")]})
        cache = ProviderCache(providers, is_self=lambda p: False)
        await nursery.start(cache.run)
        mirror = PeerMirror(cache, MirrorSettings())
        head = await _fetch_manifest(mirror, "v1", "HEAD")
        assert head is not None and dict(head.headers)["Docker-Content-Digest"] == real_digest
        by_digest = await _fetch_manifest(mirror, real_digest)
        assert by_digest is not None and by_digest.body == real
        nursery.cancel_scope.cancel()
