"""`mirror registry`: one node, every subsystem in one `trio.run`.

The registry hot path starts first and is the last to stop: on SIGTERM/SIGINT it
stops accepting and finishes in-flight responses, while everything else is
cancelled. Nothing is withdrawn from the DHT on the way out: records expire.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import SimpleNamespace

import trio

from mirror.containerd.client import ContainerdClient, ContainerdError, ContainerdUnavailable
from mirror.oci.filters import ReferenceFilter
from mirror.server.connection import ConnectionConfig
from mirror.server.listener import RegistryServer, parse_listen_address
from mirror.server.localstore import LocalStore, TagTarget, target_from
from mirror.server.registry import RegistryHandler

log = logging.getLogger("mirror")


class ContainerdTags:
    """Tag -> manifest descriptor through containerd's image store."""

    def __init__(self, client: ContainerdClient) -> None:
        self._client = client

    async def resolve(self, image_name: str) -> TagTarget | None:
        try:
            image = await self._client.get_image(image_name)
        except ContainerdError as exc:
            log.warning("tag lookup failed", extra={"image": image_name, "error": str(exc)})
            return None
        if image is None:
            return None
        try:
            return target_from(image.target.digest, image.target.media_type, image.target.size)
        except ValueError:
            return None


class ContainerdHealth:
    """Readiness follows whether containerd answers; checked in the background."""

    def __init__(self, client: ContainerdClient, interval: float = 5.0) -> None:
        self._client = client
        self._interval = interval
        self.reachable = False

    async def watch(self) -> None:
        while True:
            try:
                await self._client.version()
            except ContainerdError as exc:
                if self.reachable:
                    log.warning("containerd unreachable", extra={"error": str(exc)})
                self.reachable = False
            else:
                if not self.reachable:
                    log.info("containerd reachable")
                self.reachable = True
            await trio.sleep(self._interval)


async def resolve_content_root(client: ContainerdClient, configured: str) -> Path:
    """The content store to read: the flag's path, else what containerd reports."""
    if configured and Path(configured, "blobs").is_dir():
        return Path(configured)
    delay = 0.2
    while True:
        try:
            discovered = await client.content_root()
        except ContainerdUnavailable as exc:
            log.warning("waiting for containerd", extra={"error": str(exc), "retry_in": delay})
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if discovered is None:
            raise SystemExit("containerd reports no content store; set --containerd-content-path")
        if configured and Path(configured) != discovered:
            log.warning(
                "content path not found, using containerd's",
                extra={"configured": configured, "discovered": str(discovered)},
            )
        return discovered


async def run_registry(options: SimpleNamespace) -> int:
    host, port = parse_listen_address(options.registry_addr)
    client = ContainerdClient(options.containerd_sock, options.containerd_namespace)
    health = ContainerdHealth(client)
    content_root = await resolve_content_root(client, options.containerd_content_path)
    store = LocalStore(content_root, ContainerdTags(client))
    reference_filter = ReferenceFilter.build(options.mirrored_registries, options.registry_filters)
    handler = RegistryHandler(store, reference_filter, ready=lambda: health.reachable)
    server = RegistryServer(handler, ConnectionConfig(head_timeout=options.registry_head_timeout))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, host, port)
            log.info(
                "running",
                extra={
                    "registry": options.registry_addr,
                    "listening": ",".join(f"{h}:{p}" for h, p in server.addresses),
                    "content_path": str(content_root),
                    "namespace": options.containerd_namespace,
                },
            )
            background = trio.CancelScope()
            nursery.start_soon(_run_background, background, health)
            await _wait_for_stop_signal()
            log.info("stopping: draining in-flight requests")
            server.stop()
            background.cancel()
    finally:
        await client.aclose()
    log.info("gracefully shutdown")
    return 0


async def _run_background(scope: trio.CancelScope, health: ContainerdHealth) -> None:
    with scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(health.watch)


async def _wait_for_stop_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return
