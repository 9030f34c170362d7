"""Kademlia DHT over UDP: who holds which digest or tag.

Usable on its own (it does not import `mirror`). The sans-I/O core (ids,
messages, routing, lookup, providers, claims, handler, requests, announce,
operations, config, core) never imports Trio nor does I/O; `node` and `transport` are the
Trio shell, `identity` reads the node id and cluster key from disk, and
`bootstrap` finds the first peers.
"""

from .bootstrap import (
    Bootstrapper,
    DnsBootstrapper,
    HttpBootstrapper,
    StaticBootstrapper,
    parse_peer_address,
)
from .claims import Claim, ClaimAnswer, Lost, Refused, Won
from .identity import load_cluster_key
from .ids import key_id
from .messages import Contact, Provider
from .node import DhtNode, LookupStats, NodeConfig, NodeStats

__all__ = [
    "Bootstrapper",
    "Claim",
    "ClaimAnswer",
    "Contact",
    "DhtNode",
    "DnsBootstrapper",
    "HttpBootstrapper",
    "LookupStats",
    "Lost",
    "NodeConfig",
    "NodeStats",
    "Provider",
    "Refused",
    "StaticBootstrapper",
    "Won",
    "key_id",
    "load_cluster_key",
    "parse_peer_address",
]
