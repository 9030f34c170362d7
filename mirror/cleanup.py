"""`mirror configuration`, `mirror cleanup` and `mirror cleanup-wait`.

`cleanup` restores containerd's configuration and then answers `/readyz` until
stopped, so that `cleanup-wait` (Helm's post-delete hook) can tell when every
node has run it: it resolves the probe endpoint's name to all its addresses
and waits until every one of them answers `threshold` times in a row.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import trio

from mirror.basicauth import load_basic_auth
from mirror.containerd.hosts import add_mirror_configuration, cleanup_mirror_configuration
from mirror.options import CleanupOptions, CleanupWaitOptions, ConfigurationOptions
from mirror.server.listener import RegistryServer, parse_listen_address
from mirror.server.request import Request
from mirror.server.response import Response

log = logging.getLogger("mirror.cleanup")


def run_configuration(options: ConfigurationOptions) -> int:
    auth = load_basic_auth(options.basic_auth_dir)
    add_mirror_configuration(
        Path(options.containerd_registry_config_path),
        options.mirrored_registries,
        options.mirror_targets,
        resolve_tags=options.resolve_tags,
        prepend_existing=options.prepend_existing,
        authorization=None if auth is None else auth.header_value,
    )
    return 0


async def _readiness(request: Request) -> Response:
    if request.path in ("/readyz", "/healthz", "/livez"):
        return Response(200, [("Content-Type", "text/plain")], b"ok\n")
    return Response(404, [("Content-Type", "text/plain")], b"not found\n")


async def run_cleanup(options: CleanupOptions) -> int:
    cleanup_mirror_configuration(Path(options.containerd_registry_config_path))
    host, port = parse_listen_address(options.addr)
    server = RegistryServer(_readiness, grace_period=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, host, port)
        log.info("cleanup done; serving readiness", extra={"addr": options.addr})
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        server.stop()
    return 0


def probe_addresses(endpoint: str) -> list[str]:
    """`name:port` -> every `ip:port` the name resolves to."""
    host, port = parse_listen_address(endpoint)
    if host is None:
        raise ValueError(f"probe endpoint {endpoint!r} needs a host name")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = {
        f"[{i[4][0]}]:{port}" if i[0] == socket.AF_INET6 else f"{i[4][0]}:{port}" for i in infos
    }
    return sorted(addresses)


def _ready(address: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/readyz", timeout=timeout) as response:
            status: int = response.status
            return status == 200
    except (urllib.error.URLError, OSError):
        return False


def run_cleanup_wait(options: CleanupWaitOptions) -> int:
    successes = 0
    while True:
        try:
            addresses = probe_addresses(options.probe_endpoint)
        except (OSError, ValueError) as exc:
            log.info("probe endpoint not resolvable yet", extra={"error": str(exc)})
            addresses = []
        ready = bool(addresses) and all(_ready(a, options.period) for a in addresses)
        successes = successes + 1 if ready else 0
        log.info(
            "probed cleanup pods",
            extra={"addresses": len(addresses), "ready": ready, "consecutive": successes},
        )
        if successes >= options.threshold:
            log.info("cleanup done on every node")
            return 0
        time.sleep(options.period)
