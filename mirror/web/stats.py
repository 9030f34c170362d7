"""The debug page's state as one JSON document (`/debug/web/stats`, and the websocket)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from dht import Contact
from mirror.metrics import FeedEvent
from mirror.oci.reference import parse_image_name
from mirror.web.view import NodeView


def event_json(seq: int, event: FeedEvent) -> dict[str, Any]:
    return {"seq": seq, **event.to_json()}


def image_rows(images: dict[str, str], advertised: set[str]) -> list[dict[str, Any]]:
    """One row per advertised image: registry/repository, tag, digest."""
    rows = []
    for name in sorted(advertised):
        try:
            parsed = parse_image_name(name)
        except ValueError:
            rows.append({"name": name, "registry": "", "repository": name, "tag": "", "digest": ""})
            continue
        rows.append(
            {
                "name": name,
                "registry": parsed.registry,
                "repository": parsed.repository,
                "tag": parsed.tag or "",
                "digest": images.get(name) or parsed.digest or "",
            }
        )
    return rows


def peer_rows(peers: list[Contact], registries: Mapping[bytes, str]) -> list[dict[str, Any]]:
    """The DHT's contacts, each with its router address (UDP) and, when a lookup named
    it, its registry address (HTTP): the lookup table shows the latter."""
    return [
        {
            "node_id": peer.node_id.hex(),
            "router": f"{peer.host}:{peer.port}",
            "registry": registries.get(peer.node_id, ""),
        }
        for peer in sorted(peers, key=lambda p: (p.host, p.port))
    ]


def coldstart_json(view: NodeView) -> dict[str, Any] | None:
    """Downloads in progress on this node, who streams them, and the claims it holds."""
    state = view.coldstart
    if state is None:
        return None
    claims = set(state.claims_held())
    return {
        "downloads": [
            {
                "digest": ingest.digest,
                "size": ingest.size,
                "total": ingest.total,
                "peer_streams": state.streams.streams(ingest.digest),
                "claimed": ingest.digest in claims,
            }
            for ingest in state.in_progress()
        ],
        "claims": sorted(claims),
        "peer_streams": len(state.streams),
        "refused": state.streams.refused,
    }


async def snapshot(view: NodeView, *, events: int = 50) -> dict[str, Any]:
    telemetry = view.telemetry
    listed = dict(await view.images())
    counts = view.advertiser.counts()
    peers = view.dht.peers()
    router_host, router_port = view.dht.address
    return {
        "now": time.time(),
        "node_id": view.dht.node_id.hex(),
        "ready": view.ready(),
        "addresses": {
            "registry": [f"{host}:{port}" for host, port in view.registry.addresses],
            "router": f"{router_host}:{router_port}",
            "metrics": list(view.metrics_addresses),
        },
        "last_success": telemetry.last_success,
        "counts": {
            "images": counts.get("images", 0),
            "keys": counts.get("keys", 0),
            "tags": counts.get("tags", 0),
            "digests": counts.get("digests", 0),
            "peers": len(peers),
        },
        "requests": telemetry.summary(),
        "open_connections": view.registry.open_connections,
        "peers": peer_rows(peers, telemetry.registry_addresses),
        "transfers": telemetry.transfers.snapshot(),
        "images": image_rows(listed, set(view.advertiser.images)),
        "dht": asdict(view.dht.stats),
        "coldstart": coldstart_json(view),
        "events": [event_json(seq, event) for seq, event in telemetry.feed.recent(events)],
    }
