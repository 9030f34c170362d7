"""What the front end may read of a running node, as small protocols.

The front end only reads: the DHT node's identity, peers and counters, the
advertiser's images, the registry server's addresses. Tests give it fakes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio

from dht import Contact, NodeStats, Provider
from mirror.containerd.errors import ContainerdError
from mirror.ingest.state import ColdStartState
from mirror.metrics import Telemetry
from mirror.server.admission import Limits

log = logging.getLogger("mirror.web")


class DhtView(Protocol):
    node_id: bytes

    @property
    def address(self) -> tuple[str, int]: ...

    @property
    def stats(self) -> NodeStats: ...

    def peers(self) -> list[Contact]: ...

    def get_providers(self, key: str, limit: int = 20) -> AsyncIterator[Provider]: ...


class AdvertiserView(Protocol):
    @property
    def images(self) -> Mapping[str, frozenset[str]]: ...

    def counts(self) -> dict[str, int]: ...


class RegistryView(Protocol):
    @property
    def addresses(self) -> list[tuple[str, int]]: ...

    @property
    def open_connections(self) -> int: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def refused(self) -> Mapping[str, int]: ...


# Image name -> the digest its tag points to, as containerd lists them.
ImageLister = Callable[[], Awaitable[Mapping[str, str]]]


class CachedImages:
    """containerd's image list, asked at most once per `ttl`; the last answer on errors."""

    def __init__(self, lister: ImageLister, ttl: float = 2.0) -> None:
        self._lister = lister
        self._ttl = ttl
        self._value: Mapping[str, str] = {}
        self._expires = -float("inf")
        self._lock = trio.Lock()

    async def __call__(self) -> Mapping[str, str]:
        async with self._lock:
            if trio.current_time() >= self._expires:
                try:
                    with trio.fail_after(5.0):
                        self._value = await self._lister()
                except (ContainerdError, trio.TooSlowError) as exc:
                    log.warning("cannot list images", extra={"error": repr(exc)})
                self._expires = trio.current_time() + self._ttl
            return self._value


async def no_images() -> Mapping[str, str]:
    await trio.lowlevel.checkpoint()
    return {}


@dataclass
class NodeView:
    dht: DhtView
    advertiser: AdvertiserView
    registry: RegistryView
    telemetry: Telemetry
    images: ImageLister = no_images
    ready: Callable[[], bool] = lambda: True
    metrics_addresses: list[str] = field(default_factory=list)
    coldstart: ColdStartState | None = None
    # The `Authorization` value the registry port requires (basic auth), else None.
    registry_authorization: str | None = None

    def registry_endpoint(self) -> tuple[str, int]:
        """Where this node's own registry port answers, for pulls through it."""
        if not self.registry.addresses:
            raise RuntimeError("the registry port is not listening")
        host, port = self.registry.addresses[0]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return host, port
