"""`mirror registry`: one node, every subsystem in one `trio.run`.

`Node.run` starts each part once what it needs is running: containerd's
content path, the DHT socket, the provider cache and the background work
(health, advertising), then the registry hot path, then the metrics front end;
only then does it report itself started. `Node.stop` (SIGTERM or SIGINT under
`run_registry`) makes the hot path stop accepting and finish in-flight
responses while everything else is cancelled. Nothing is withdrawn from the
DHT on the way out: records expire on their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

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
from mirror.basicauth import BasicAuth, load_basic_auth
from mirror.containerd.client import ContainerdClient, ContainerdError, ContainerdUnavailable
from mirror.containerd.config import (
    ConfigError,
    config_warnings,
    load_config,
    stream_cap_advice,
)
from mirror.errors import StartupError
from mirror.ingest.announcer import IngestAnnouncer
from mirror.ingest.serving import InflightBlobs
from mirror.ingest.state import ColdStartState
from mirror.ingest.watcher import IngestWatcher
from mirror.looplag import watch_loop_lag
from mirror.metrics import Telemetry, TimedProviders
from mirror.mirroring.claimbook import ClaimBook
from mirror.mirroring.forwarding import forwarded
from mirror.mirroring.mirror import MirrorSettings, PeerMirror
from mirror.mirroring.poisoned import PoisonedIngests
from mirror.mirroring.providers import ProviderCache
from mirror.mirroring.striper import StripeSettings
from mirror.oci.filters import ReferenceFilter
from mirror.options import RegistryOptions
from mirror.server.connection import ConnectionConfig
from mirror.server.listener import RegistryServer, parse_listen_address
from mirror.server.localstore import LocalStore, TagTarget, target_from
from mirror.server.pacing import Pacer
from mirror.server.proofs import BlobProofs
from mirror.server.registry import RegistryHandler
from mirror.server.streamcap import StreamCap
from mirror.web.server import metrics_front_end

log = logging.getLogger("mirror")
T = TypeVar("T")


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
    if configured and await trio.Path(configured, "blobs").is_dir():
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
            raise StartupError("containerd reports no content store; set --containerd-content-path")
        if configured and Path(configured) != discovered:
            log.warning(
                "content path not found, using containerd's",
                extra={"configured": configured, "discovered": str(discovered)},
            )
        return discovered


def make_bootstrapper(options: RegistryOptions) -> Bootstrapper | None:
    kind = options.bootstrap_kind
    if kind == "":
        raise StartupError(
            "--bootstrap-kind is required: static, dns or http "
            "(a node on its own: --bootstrap-kind=static with no --static-bootstrap-peers)"
        )
    if kind == "static":
        # No peers named: a cluster of one, ready at once (AloneCheck).
        peers = options.static_bootstrap_peers
        return StaticBootstrapper(peers) if peers else None
    if kind == "dns":
        if not options.dns_bootstrap_domain:
            raise StartupError("--bootstrap-kind=dns needs --dns-bootstrap-domain")
        return DnsBootstrapper(options.dns_bootstrap_domain)
    if kind == "http":
        return HttpBootstrapper(
            options.http_bootstrap_peer or None, options.http_bootstrap_addr or None
        )
    raise StartupError(f"unknown --bootstrap-kind {kind!r}: use static, dns or http")


def usable_data_dir(path: str) -> Path | None:
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        log.warning("data dir not usable; node id will not persist", extra={"error": str(exc)})
        return None
    return Path(path)


def dht_config(options: RegistryOptions, registry_port: int) -> NodeConfig:
    host, port = parse_listen_address(options.router_addr)
    key = None
    if options.router_key_file:
        try:
            key = load_cluster_key(Path(options.router_key_file))
        except (OSError, ValueError) as exc:
            raise StartupError(f"--router-key-file={options.router_key_file}: {exc}") from None
    else:
        log.warning(
            "the DHT is unauthenticated: anyone who reaches the router port can announce "
            "content and read who holds what; give every node the same --router-key-file "
            "(the Helm chart and the systemd unit do by default)",
            extra={"router_addr": options.router_addr},
        )
    return NodeConfig(
        bind_host=host or "0.0.0.0",
        bind_port=port,
        registry_port=registry_port,
        data_dir=usable_data_dir(options.data_dir),
        cluster_key=key,
    )


def warn_about_containerd_config(options: RegistryOptions) -> None:
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
    advice = stream_cap_advice(config, options.peer_streams) if options.cold_start else None
    if advice is not None:
        log.info(advice, extra={"containerd_config": str(path)})


async def _listening(flag: str, value: str, starting: Awaitable[T]) -> T:
    """Await a listener's start; one that cannot bind is one line naming its flag."""
    try:
        return await starting
    except OSError as exc:
        raise StartupError(f"cannot listen on {flag}={value}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class NodeAddresses:
    """Where a started node listens."""

    registry: list[tuple[str, int]]
    router: tuple[str, int]
    metrics: list[str]


class Node:
    """One `mirror registry` node."""

    def __init__(self, options: RegistryOptions) -> None:
        self.options = options
        self._stop = trio.Event()

    def stop(self) -> None:
        """Stop accepting, finish in-flight responses, cancel the rest; safe before start."""
        self._stop.set()

    async def run(
        self, *, task_status: trio.TaskStatus[NodeAddresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        options = self.options
        host, port = parse_listen_address(options.registry_addr)
        await trio.to_thread.run_sync(warn_about_containerd_config, options)
        bootstrapper = make_bootstrapper(options)
        config = dht_config(options, port)
        auth = await trio.to_thread.run_sync(load_basic_auth, options.basic_auth_dir)
        if auth is not None:
            log.info("basic auth on the registry port", extra={"dir": options.basic_auth_dir})
        client = ContainerdClient(options.containerd_sock, options.containerd_namespace)
        try:
            content_root = await resolve_content_root(client, options.containerd_content_path)
            async with contextlib.AsyncExitStack() as stack:
                dht = await _listening(
                    "--router-addr",
                    options.router_addr,
                    stack.enter_async_context(DhtNode.open(config, bootstrapper)),
                )
                await self._serve(
                    client, content_root, dht, bootstrapper, auth, host, port, task_status
                )
        finally:
            await client.aclose()

    async def _serve(
        self,
        client: ContainerdClient,
        content_root: Path,
        dht: DhtNode,
        bootstrapper: Bootstrapper | None,
        auth: BasicAuth | None,
        host: str | None,
        port: int,
        task_status: trio.TaskStatus[NodeAddresses],
    ) -> None:
        options = self.options
        authorization = None if auth is None else auth.header_value
        health = ContainerdHealth(client)
        alone = AloneCheck(bootstrapper, dht)
        store = LocalStore(content_root, ContainerdTags(client))
        reference_filter = ReferenceFilter.build(
            options.mirrored_registries, options.registry_filters
        )

        def ready() -> bool:
            return health.reachable and (dht.ready() or alone.alone)

        def is_self(p: Provider) -> bool:
            return p.node_id == dht.node_id

        telemetry = Telemetry(relay_mode=options.mirror_relay)
        cache = ProviderCache(TimedProviders(dht, telemetry, is_self=is_self), is_self=is_self)
        settings = MirrorSettings(
            resolve_timeout=options.mirror_resolve_timeout,
            resolve_retries=options.mirror_resolve_retries,
            use_splice=options.mirror_relay in ("splice", "redirect"),
            redirect=options.mirror_relay == "redirect",
            cold_start=options.cold_start,
            min_rate=options.mirror_min_rate,
            stripe=StripeSettings(width=options.mirror_stripe_width),
        )
        book = ClaimBook(settings.claim_lease)
        advertiser = Advertiser(
            client,
            dht,
            content_root,
            reference_filter,
            namespace=options.containerd_namespace,
            on_image_change=store.forget_tag,
            on_content_gone=store.forget_digest,
        )
        announcer = IngestAnnouncer(
            dht, content_root, book, on_committed=advertiser.content_committed
        )
        watcher = IngestWatcher(content_root, on_change=announcer.on_change)
        inflight = InflightBlobs(
            watcher,
            content_root,
            expecting=lambda key: book.holds(key, trio.current_time()),
            on_damaged=announcer.disown,
        )
        # Without cold start nothing waits out a busy answer: no cap then.
        stream_cap = StreamCap(options.peer_streams if options.cold_start else 0)

        def receiving() -> Iterator[str]:
            """The digests the local containerd is downloading now."""
            return (ingest.digest for ingest in watcher.all())

        def forwards(digest: str) -> bool:
            return digest in forwarded(dht.node_id, receiving(), book.held(trio.current_time()))

        passes_on = forwards if options.cold_start else None
        mirror = PeerMirror(
            cache,
            settings,
            on_event=telemetry.on_mirror_event,
            claims=dht,
            book=book,
            abort_ingest=PoisonedIngests(client).abort,
            authorization=authorization,
            ledger=telemetry,
            forwards=passes_on,
            downloading=receiving,
        )
        handler = RegistryHandler(
            store,
            reference_filter,
            ready=ready,
            miss=mirror,
            on_local_miss=advertiser.local_miss,
            inflight=inflight if options.cold_start else None,
            stream_cap=stream_cap,
            peer_pacer=Pacer(options.peer_upload_rate) if options.peer_upload_rate else None,
            auth=auth,
            forwards=passes_on,
            proofs=BlobProofs(on_wrong=announcer.proof_failed),
        )
        server = RegistryServer(
            telemetry.instrument(handler),
            ConnectionConfig(head_timeout=options.registry_head_timeout),
            client_connections=options.registry_client_connections,
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
            coldstart=ColdStartState(watcher, book, stream_cap, announcer)
            if options.cold_start
            else None,
            registry_authorization=authorization,
        )
        background = trio.CancelScope()

        async def run_background(*, task_status: trio.TaskStatus[None]) -> None:
            with background:
                async with trio.open_nursery() as nursery:
                    await nursery.start(cache.run)
                    nursery.start_soon(health.watch)
                    nursery.start_soon(advertiser.run)
                    nursery.start_soon(alone.watch)
                    nursery.start_soon(watch_loop_lag, telemetry.loop_lag.observe)
                    if options.cold_start:
                        await nursery.start(watcher.run)
                        nursery.start_soon(announcer.run)
                    task_status.started()

        async with trio.open_nursery() as nursery:
            await nursery.start(run_background)
            await _listening(
                "--registry-addr", options.registry_addr, nursery.start(server.run, host, port)
            )
            metrics_urls = await _listening(
                "--metrics-addr", options.metrics_addr, nursery.start(web.run)
            )
            addresses = NodeAddresses(list(server.addresses), dht.address, list(metrics_urls))
            log.info(
                "running",
                extra={
                    "registry": ",".join(f"{h}:{p}" for h, p in addresses.registry),
                    "router": "{}:{}".format(*addresses.router),
                    "node_id": dht.node_id.hex(),
                    "content_path": str(content_root),
                    "namespace": options.containerd_namespace,
                    "bootstrap": options.bootstrap_kind or "none",
                    "connection_limit": server.limits.connections,
                    "client_connection_limit": server.limits.per_client,
                },
            )
            task_status.started(addresses)
            await self._stop.wait()
            log.info("stopping: draining in-flight requests")
            server.stop()
            web.stop()
            background.cancel()


async def run_registry(options: RegistryOptions) -> int:
    node = Node(options)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, node)
            await node.run()
            nursery.cancel_scope.cancel()
    except* StartupError as group:
        raise _first_leaf(group) from None
    log.info("gracefully shutdown")
    return 0


def _first_leaf(group: BaseExceptionGroup[StartupError]) -> StartupError:
    """The first StartupError of a group that nurseries may have nested."""
    first = group.exceptions[0]
    return first if isinstance(first, StartupError) else _first_leaf(first)


async def _stop_on_signal(node: Node) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            node.stop()
            return
