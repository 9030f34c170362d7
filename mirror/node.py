"""`mirror registry`: one node, every subsystem in one `trio.run`.

Start order: containerd's content path, the DHT socket, the registry hot path,
then the background work (advertising, provider lookups, health). On SIGTERM or
SIGINT the hot path stops accepting and finishes in-flight responses while
everything else is cancelled. Nothing is withdrawn from the DHT on the way
out: records expire on their own.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import trio

from dht import (
    Bootstrapper,
    DhtNode,
    DnsBootstrapper,
    HttpBootstrapper,
    NodeConfig,
    Provider,
    StaticBootstrapper,
    load_cluster_key,
)
from mirror.advertise.tracker import Advertiser
from mirror.containerd.client import ContainerdClient, ContainerdError, ContainerdUnavailable
from mirror.containerd.config import ConfigError, config_warnings, load_config
from mirror.metrics import Telemetry, TimedProviders
from mirror.mirroring.mirror import MirrorSettings, PeerMirror
from mirror.mirroring.providers import ProviderCache
from mirror.oci.filters import ReferenceFilter
from mirror.server.connection import ConnectionConfig
from mirror.server.listener import RegistryServer, parse_listen_address
from mirror.server.localstore import LocalStore, TagTarget, target_from
from mirror.server.registry import RegistryHandler
from mirror.web.server import metrics_front_end

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


class AloneCheck:
    """A node whose bootstrap names no one but itself is a cluster of one, and ready.

    Spegel's rule: without it a single-node cluster (or the first node of a new
    one) would never pass its readiness probe.
    """

    def __init__(
        self, bootstrapper: Bootstrapper | None, dht: DhtNode, interval: float = 5.0
    ) -> None:
        self._bootstrapper = bootstrapper
        self._dht = dht
        self._interval = interval
        self.alone = bootstrapper is None

    async def watch(self) -> None:
        if self._bootstrapper is None:
            return
        while not self._dht.ready():
            own = self._dht.address
            with trio.move_on_after(10):
                peers = await self._bootstrapper.peers(own)
                self.alone = bool(peers) and all(tuple(p) == tuple(own) for p in peers)
            await trio.sleep(self._interval)
        self.alone = False


class ContainerdHealth:
    """Whether containerd answers; checked in the background."""

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


def make_bootstrapper(options: SimpleNamespace) -> Bootstrapper | None:
    kind = options.bootstrap_kind
    if kind == "":
        return None
    if kind == "static":
        return StaticBootstrapper(options.static_bootstrap_peers)
    if kind == "dns":
        if not options.dns_bootstrap_domain:
            raise SystemExit("--bootstrap-kind=dns needs --dns-bootstrap-domain")
        return DnsBootstrapper(options.dns_bootstrap_domain)
    if kind == "http":
        return HttpBootstrapper(
            options.http_bootstrap_peer or None, options.http_bootstrap_addr or None
        )
    raise SystemExit(f"unknown --bootstrap-kind {kind!r}: use static, dns or http")


def usable_data_dir(path: str) -> Path | None:
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        log.warning("data dir not usable; node id will not persist", extra={"error": str(exc)})
        return None
    return Path(path)


def dht_config(options: SimpleNamespace, registry_port: int) -> NodeConfig:
    host, port = parse_listen_address(options.router_addr)
    key = load_cluster_key(Path(options.router_key_file)) if options.router_key_file else None
    return NodeConfig(
        bind_host=host or "0.0.0.0",
        bind_port=port,
        registry_port=registry_port,
        data_dir=usable_data_dir(options.data_dir),
        cluster_key=key,
    )


def warn_about_containerd_config(options: SimpleNamespace) -> None:
    path = Path(options.containerd_config_file)
    if not options.containerd_config_file or not path.is_file():
        return
    try:
        config = load_config(path)
    except (ConfigError, OSError, ValueError) as exc:
        log.warning("cannot read containerd's config", extra={"path": str(path), "error": str(exc)})
        return
    for warning in config_warnings(config, options.containerd_registry_config_path):
        log.warning(warning, extra={"containerd_config": str(path)})


async def run_registry(options: SimpleNamespace) -> int:
    host, port = parse_listen_address(options.registry_addr)
    warn_about_containerd_config(options)
    bootstrapper = make_bootstrapper(options)
    client = ContainerdClient(options.containerd_sock, options.containerd_namespace)
    health = ContainerdHealth(client)
    content_root = await resolve_content_root(client, options.containerd_content_path)
    store = LocalStore(content_root, ContainerdTags(client))
    reference_filter = ReferenceFilter.build(options.mirrored_registries, options.registry_filters)
    try:
        async with DhtNode.open(dht_config(options, port), bootstrapper) as dht:
            alone = AloneCheck(bootstrapper, dht)

            def ready() -> bool:
                return health.reachable and (dht.ready() or alone.alone)

            def is_self(p: Provider) -> bool:
                return p.node_id == dht.node_id

            telemetry = Telemetry(relay_mode=options.mirror_relay)
            cache = ProviderCache(TimedProviders(dht, telemetry, is_self=is_self), is_self=is_self)
            settings = MirrorSettings(
                resolve_timeout=options.mirror_resolve_timeout,
                resolve_retries=options.mirror_resolve_retries,
                use_splice=options.mirror_relay == "splice",
            )
            handler = RegistryHandler(
                store,
                reference_filter,
                ready=ready,
                miss=PeerMirror(cache, settings, on_event=telemetry.on_mirror_event),
            )
            advertiser = Advertiser(
                client,
                dht,
                content_root,
                reference_filter,
                namespace=options.containerd_namespace,
                on_image_change=lambda name: store.forget_tag(name),
            )
            server = RegistryServer(
                telemetry.instrument(handler),
                ConnectionConfig(head_timeout=options.registry_head_timeout),
                observe=telemetry.observe,
            )

            async def list_images() -> dict[str, str]:
                return {image.name: image.target.digest for image in await client.list_images()}

            web = metrics_front_end(
                options.metrics_addr,
                telemetry,
                dht=dht,
                advertiser=advertiser,
                registry=server,
                images=list_images,
                ready=ready,
                debug_web=options.debug_web_enabled,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run, host, port)
                await nursery.start(web.run)
                log.info(
                    "running",
                    extra={
                        "registry": ",".join(f"{h}:{p}" for h, p in server.addresses),
                        "router": "{}:{}".format(*dht.address),
                        "node_id": dht.node_id.hex(),
                        "content_path": str(content_root),
                        "namespace": options.containerd_namespace,
                        "bootstrap": options.bootstrap_kind or "none",
                    },
                )
                background = trio.CancelScope()
                nursery.start_soon(
                    _run_background,
                    background,
                    health.watch,
                    cache.run,
                    advertiser.run,
                    alone.watch,
                )
                await _wait_for_stop_signal()
                log.info("stopping: draining in-flight requests")
                server.stop()
                web.stop()
                background.cancel()
    finally:
        await client.aclose()
    log.info("gracefully shutdown")
    return 0


async def _run_background(scope: trio.CancelScope, *tasks: object) -> None:
    with scope:
        async with trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(task)  # type: ignore[arg-type]


async def _wait_for_stop_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return
