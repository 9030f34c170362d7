"""Answers to incoming requests: pure logic over the routing table and the stores."""

from __future__ import annotations

from collections.abc import Callable

from .messages import (
    AddProvider,
    AddProviderAck,
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
    ) -> None:
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
        return None  # a reply nobody waits for: not ours to answer


def sender_contact(envelope: Envelope, host: str, port: int) -> Contact:
    return Contact(envelope.sender_id, host, port)
