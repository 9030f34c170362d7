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

    Where a provider or claimant is: with a cluster key (`sealed`), the address
    inside the sealed message, so that a datagram captured and resent from
    elsewhere still names its author; without one, the datagram's source
    (which the caller has verified with a cookie), since anyone can write
    anything in an unsealed message.
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
        sealed: bool = False,
    ) -> None:
        self.inflight_ttl = inflight_ttl
        self.claims = claims if claims is not None else ClaimTable()
        self.routing = routing
        self.store = store
        self.own_record = own_record
        self.k = k
        self.sealed = sealed

    def handle(self, envelope: Envelope, host: str, port: int, now: float) -> Message | None:
        m = envelope.message
        sender = envelope.sender_id
        if isinstance(m, FindNode):
            return Nodes(tuple(self.routing.closest(m.target, self.k, exclude=sender)))
        if isinstance(m, GetProviders):
            return self._providers(m, sender, now)
        if isinstance(m, Ping):
            return Pong(host, port)
        if isinstance(m, AddProvider | AddInflight | ClaimRequest | Release):
            where = self.origin(m, host, port)
            if isinstance(m, ClaimRequest | Release):
                return self._claim(m, where and Provider(sender, *where, m.registry_port), now)
            if where is None:
                return AddProviderAck(0)
            if isinstance(m, AddProvider):
                provider = Provider(sender, *where, m.registry_port)
                return AddProviderAck(self.store.add_many(m.keys, provider, now))
            provider = Provider(sender, *where, m.registry_port, (m.done, m.total))
            return AddProviderAck(int(self.store.add(m.key, provider, now, self.inflight_ttl)))
        return None  # a reply nobody waits for: not ours to answer

    def origin(
        self, m: AddProvider | AddInflight | ClaimRequest | Release, host: str, port: int
    ) -> tuple[str, int] | None:
        """The (host, UDP port) the sender announces itself at; None if unusable."""
        if not self.sealed:
            return host, port
        if m.host in ("0.0.0.0", "::"):  # the sender does not know its address yet
            return None
        return m.host, m.udp_port

    def _providers(self, m: GetProviders, sender: bytes, now: float) -> Providers:
        limit = min(m.limit, self.store.max_per_key) if m.limit else self.store.max_per_key
        providers = self.store.get(m.key, now, limit)
        own = self.own_record(m.key)
        if own is not None:
            providers = [own, *(p for p in providers if p.node_id != own.node_id)]
        return Providers(
            tuple(providers), tuple(self.routing.closest(m.key, self.k, exclude=sender))
        )

    def _claim(self, m: ClaimRequest | Release, claimant: Provider | None, now: float) -> Message:
        """CLAIM: put-if-absent in the claim table; RELEASE: only the holder's counts."""
        if isinstance(m, Release):
            return Released(claimant is not None and self.claims.release(m.key, claimant, now))
        if claimant is None:
            return ClaimReply(CLAIM_REFUSED, None, 0.0)
        return claim_reply(self.claims.claim(m.key, claimant, now, m.lease), now)


def claim_reply(answer: Won | Lost | object, now: float) -> ClaimReply:
    if isinstance(answer, Won | Lost):
        status = CLAIM_WON if isinstance(answer, Won) else CLAIM_LOST
        remaining = min(max(answer.claim.expires - now, 0.0), MAX_LEASE)
        return ClaimReply(status, answer.claim.holder, remaining)
    return ClaimReply(CLAIM_REFUSED, None, 0.0)


def sender_contact(envelope: Envelope, host: str, port: int) -> Contact:
    return Contact(envelope.sender_id, host, port)
