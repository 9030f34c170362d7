"""Answers to incoming requests: pure logic over the routing table and the stores."""

from __future__ import annotations

from collections.abc import Callable

from .claims import ClaimTable, Lost, Won
from .messages import (
    CLAIM_LOST,
    CLAIM_REFUSED,
    CLAIM_WON,
    MAX_LEASE,
    AddInflight,
    AddProvider,
    AddProviderAck,
    ClaimReply,
    ClaimRequest,
    Contact,
    Envelope,
    FindNode,
    GetProviders,
    Message,
    Nodes,
    Ping,
    Pong,
    Provider,
    Providers,
    Release,
    Released,
)
from .providers import ProviderStore
from .routing import RoutingTable


class RequestHandler:
    """Turns one request into its reply.

    `own_record(key_id)` gives this node's own provider record when it provides
    that key itself, so that a node asked about its own content names itself.
    """

    def __init__(
        self,
        routing: RoutingTable,
        store: ProviderStore,
        own_record: Callable[[bytes], Provider | None],
        *,
        k: int = 20,
        claims: ClaimTable | None = None,
        inflight_ttl: float = 30.0,
    ) -> None:
        self.inflight_ttl = inflight_ttl
        self.claims = claims if claims is not None else ClaimTable()
        self.routing = routing
        self.store = store
        self.own_record = own_record
        self.k = k

    def handle(self, envelope: Envelope, host: str, port: int, now: float) -> Message | None:
        m = envelope.message
        sender = envelope.sender_id
        if isinstance(m, FindNode):
            return Nodes(tuple(self.routing.closest(m.target, self.k, exclude=sender)))
        if isinstance(m, GetProviders):
            limit = min(m.limit, self.store.max_per_key) if m.limit else self.store.max_per_key
            providers = self.store.get(m.key, now, limit)
            own = self.own_record(m.key)
            if own is not None:
                providers = [own, *(p for p in providers if p.node_id != own.node_id)]
            return Providers(
                tuple(providers), tuple(self.routing.closest(m.key, self.k, exclude=sender))
            )
        if isinstance(m, AddProvider):
            provider = Provider(sender, host, port, m.registry_port)
            stored = sum(self.store.add(key, provider, now) for key in m.keys)
            return AddProviderAck(stored)
        if isinstance(m, Ping):
            return Pong(host, port)
        if isinstance(m, AddInflight):
            progress = (m.done, m.total)
            provider = Provider(sender, host, port, m.registry_port, progress)
            return AddProviderAck(int(self.store.add(m.key, provider, now, self.inflight_ttl)))
        if isinstance(m, ClaimRequest | Release):
            return self._claim(m, Provider(sender, host, port, 0), now)
        return None  # a reply nobody waits for: not ours to answer

    def _claim(self, m: ClaimRequest | Release, sender: Provider, now: float) -> Message:
        """CLAIM: put-if-absent in the claim table; RELEASE: only the holder's counts.

        The claimant is the datagram's source; only the registry port is its word."""
        if isinstance(m, Release):
            # The holder is matched on id and host (and registry port): take the held one's.
            held = self.claims.get(m.key, now)
            port = held.holder.registry_port if held is not None else 0
            claimant = Provider(sender.node_id, sender.host, sender.udp_port, port)
            return Released(self.claims.release(m.key, claimant, now))
        claimant = Provider(sender.node_id, sender.host, sender.udp_port, m.registry_port)
        return claim_reply(self.claims.claim(m.key, claimant, now, m.lease), now)


def claim_reply(answer: Won | Lost | object, now: float) -> ClaimReply:
    if isinstance(answer, Won | Lost):
        status = CLAIM_WON if isinstance(answer, Won) else CLAIM_LOST
        remaining = min(max(answer.claim.expires - now, 0.0), MAX_LEASE)
        return ClaimReply(status, answer.claim.holder, remaining)
    return ClaimReply(CLAIM_REFUSED, None, 0.0)


def sender_contact(envelope: Envelope, host: str, port: int) -> Contact:
    return Contact(envelope.sender_id, host, port)
