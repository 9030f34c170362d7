"""Serve the front end with hypercorn's trio worker, in the node's own `trio.run`."""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
from collections.abc import Callable

import hypercorn.trio
import trio
from hypercorn.config import Config, Sockets
from quart_trio import QuartTrio

from mirror.ingest.state import ColdStartState
from mirror.metrics import Telemetry
from mirror.server.listener import parse_listen_address
from mirror.web.app import create_app
from mirror.web.collector import NodeCollector
from mirror.web.view import (
    AdvertiserView,
    CachedImages,
    DhtView,
    ImageLister,
    NodeView,
    RegistryView,
)

log = logging.getLogger("mirror.web")
# Hypercorn's own messages: warnings and errors only. Its INFO banner ("Running on
# ... (CTRL + C to quit)") says nothing our "listening" line does not.
hypercorn_log = logging.getLogger("mirror.web.hypercorn")
hypercorn_log.setLevel(logging.WARNING)


class _Config(Config):
    """Hypercorn's config, with listening sockets that cut readers who stop reading.

    Hypercorn shields its socket writes from cancellation, so a websocket client
    that never reads would pin its handler (and a graceful stop) forever. With
    TCP_USER_TIMEOUT, inherited by every accepted socket, the kernel aborts a
    connection whose sent data stays unacknowledged (zero window included) for
    `stall_timeout`; the blocked write then fails and the handler ends.
    """

    stall_timeout: float = 10.0
    _bound: Sockets | None = None

    def bind_now(self) -> None:
        """Bind before hypercorn starts, so a busy address fails as a plain OSError."""
        if self._bound is None:
            self._bound = self._make_sockets()

    def create_sockets(self) -> Sockets:
        sockets, self._bound = self._bound or self._make_sockets(), None
        return sockets

    def _make_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        for sock in (*sockets.insecure_sockets, *sockets.secure_sockets):
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.stall_timeout * 1000)
                )
        return sockets


def hypercorn_config(
    addr: str, *, graceful_timeout: float = 1.0, stall_timeout: float = 10.0
) -> _Config:
    host, port = parse_listen_address(addr)
    config = _Config()
    config.stall_timeout = stall_timeout
    if host is None:
        config.bind = [f"0.0.0.0:{port}"]
    elif ":" in host:
        config.bind = [f"[{host}]:{port}"]
    else:
        config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = hypercorn_log
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = 30.0
    return config


class MetricsServer:
    """`/metrics` and the debug page on `--metrics-addr`, until `stop()`."""

    def __init__(self, app: QuartTrio, addr: str, *, stall_timeout: float = 10.0) -> None:
        self._app = app
        self._config = hypercorn_config(addr, stall_timeout=stall_timeout)
        self._stop = trio.Event()
        self.urls: list[str] = []

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._config.bind_now()
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                functools.partial(
                    hypercorn.trio.serve,
                    self._app,
                    self._config,
                    shutdown_trigger=self._stop.wait,
                )
            )
            self.urls.extend(urls)  # in place: the debug page's view holds this list
            log.info("metrics and debug web listening", extra={"urls": ",".join(urls)})
            task_status.started(self.urls)

    def stop(self) -> None:
        self._stop.set()


def metrics_front_end(
    addr: str,
    telemetry: Telemetry,
    *,
    dht: DhtView,
    advertiser: AdvertiserView,
    registry: RegistryView,
    images: ImageLister,
    ready: Callable[[], bool],
    debug_web: bool = True,
    coldstart: ColdStartState | None = None,
    registry_authorization: str | None = None,
) -> MetricsServer:
    """The whole front end of one node, ready to `run`; `mirror registry` wires it in."""
    view = NodeView(
        dht,
        advertiser,
        registry,
        telemetry,
        CachedImages(images),
        ready,
        coldstart=coldstart,
        registry_authorization=registry_authorization,
    )
    telemetry.registry.register(NodeCollector(view))
    server = MetricsServer(create_app(view, debug_web=debug_web), addr)
    view.metrics_addresses = server.urls
    return server
