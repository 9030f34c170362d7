"""An in-process node for the front end's tests: the real hot path and app, a fake DHT.

The registry port is the real `RegistryServer` + `RegistryHandler` over a real
content directory laid out as containerd's (`blobs/sha256/<hex>`), holding one
small OCI image; the DHT and the advertiser are fakes that say what a test wants.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from dht import Contact, NodeStats, Provider
from mirror.basicauth import BasicAuth
from mirror.metrics import Telemetry, TimedProviders
from mirror.mirroring.mirror import MirrorSettings, PeerMirror
from mirror.mirroring.providers import ProviderCache
from mirror.oci.digest import parse_digest
from mirror.oci.mediatypes import OCI_MANIFEST
from mirror.server.connection import Handler
from mirror.server.listener import RegistryServer
from mirror.server.localstore import LocalStore, TagTarget
from mirror.server.registry import RegistryHandler
from mirror.server.request import Request
from mirror.server.response import Response
from mirror.web.app import create_app
from mirror.web.collector import NodeCollector
from mirror.web.server import MetricsServer
from mirror.web.view import NodeView

REGISTRY = "example.com"
REPOSITORY = "team/app"
TAG = "v1"
NODE_ID = bytes.fromhex("5e1f" * 8)
PEER_ID = bytes.fromhex("0bee" * 8)
PEER_HOST = "127.0.0.2"
# A blob only the gone peer (PEER_ID) is recorded for.
GONE_DIGEST = "sha256:" + "0e" * 32
# A peer that serves (the real hot path) a blob the node does not hold.
SERVING_ID = bytes.fromhex("5e7e" * 8)
SERVING_HOST = "127.0.0.3"


def dead_port(host: str) -> int:
    """A port on `host` that nothing listens on (bound once, then closed)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str


@dataclass
class ContentImage:
    root: Path
    manifest: Blob
    config: Blob
    layers: list[Blob]

    @property
    def name(self) -> str:
        return f"{REGISTRY}/{REPOSITORY}:{TAG}"

    def blob_path(self, blob: Blob) -> str:
        return f"/v2/{REPOSITORY}/blobs/{blob.digest}?ns={REGISTRY}"


def _put(root: Path, data: bytes, media_type: str) -> Blob:
    hex_digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / "sha256" / hex_digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Blob(f"sha256:{hex_digest}", len(data), media_type)


def write_image(root: Path, layer_sizes: tuple[int, ...] = (4 * 1024 * 1024,)) -> ContentImage:
    layers = [
        _put(root, bytes([i + 1]) * size, "application/vnd.oci.image.layer.v1.tar")
        for i, size in enumerate(layer_sizes)
    ]
    config = _put(
        root,
        json.dumps({"architecture": "amd64", "os": "linux"}).encode(),
        "application/vnd.oci.image.config.v1+json",
    )

    def descriptor(blob: Blob) -> dict[str, object]:
        return {"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config),
        "layers": [descriptor(layer) for layer in layers],
    }
    top = _put(root, json.dumps(manifest).encode(), OCI_MANIFEST)
    return ContentImage(root, top, config, layers)


class FixedTags:
    def __init__(self, targets: Mapping[str, TagTarget]) -> None:
        self._targets = dict(targets)

    async def resolve(self, image_name: str) -> TagTarget | None:
        await trio.lowlevel.checkpoint()
        return self._targets.get(image_name)


@dataclass
class FakeDht:
    node_id: bytes = NODE_ID
    address: tuple[str, int] = ("127.0.0.1", 5001)
    contacts: list[Contact] = field(default_factory=lambda: [Contact(PEER_ID, PEER_HOST, 5001)])
    providers: dict[str, list[Provider]] = field(default_factory=dict)

    @property
    def stats(self) -> NodeStats:
        fields = {name: 0 for name in NodeStats.__dataclass_fields__}
        return NodeStats(**{**fields, "routing_table_size": len(self.contacts), "lookups": 3})

    def peers(self) -> list[Contact]:
        return list(self.contacts)

    async def get_providers(self, key: str, limit: int = 20) -> AsyncIterator[Provider]:
        for provider in self.providers.get(key, []):
            await trio.sleep(0.001)
            yield provider


@dataclass
class FakeAdvertiser:
    images: dict[str, frozenset[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        keys = {key for keys in self.images.values() for key in keys}
        tags = sum(1 for key in keys if not key.startswith("sha"))
        return {
            "images": len(self.images),
            "keys": len(keys),
            "tags": tags,
            "digests": len(keys) - tags,
        }


@dataclass
class InProcessNode:
    image: ContentImage
    telemetry: Telemetry
    registry: RegistryServer
    dht: FakeDht
    advertiser: FakeAdvertiser
    web_url: str
    # Held by the serving peer only: a GET of it through the node is a mirror hit.
    peer_blob: Blob

    @property
    def registry_address(self) -> tuple[str, int]:
        return self.registry.addresses[0]


@dataclass
class RegistryGate:
    """Holds every registry request until `release`; `entered` is set by the first one."""

    entered: trio.Event = field(default_factory=trio.Event)
    released: trio.Event = field(default_factory=trio.Event)

    def wrap(self, handler: Handler) -> Handler:
        async def held(request: Request) -> Response:
            self.entered.set()
            await self.released.wait()
            return await handler(request)

        return held

    def release(self) -> None:
        self.released.set()


@asynccontextmanager
async def in_process_node(
    tmp_path: Path,
    *,
    debug_web: bool = True,
    stall_timeout: float = 10.0,
    gate: RegistryGate | None = None,
    auth: BasicAuth | None = None,
    layer_sizes: tuple[int, ...] = (4 * 1024 * 1024,),
) -> AsyncIterator[InProcessNode]:
    image = write_image(tmp_path / "content", layer_sizes)
    target = TagTarget(parse_digest(image.manifest.digest), OCI_MANIFEST, image.manifest.size)
    store = LocalStore(image.root, FixedTags({image.name: target}))
    telemetry = Telemetry()
    dht = FakeDht()

    def is_self(provider: Provider) -> bool:
        return provider.node_id == NODE_ID

    # The real peer mirror, over the fake DHT: a local miss is handed to the peers.
    cache = ProviderCache(TimedProviders(dht, telemetry, is_self=is_self), is_self=is_self)
    mirror = PeerMirror(
        cache, MirrorSettings(), on_event=telemetry.on_mirror_event, ledger=telemetry
    )
    handler = telemetry.instrument(RegistryHandler(store, auth=auth, miss=mirror))
    registry = RegistryServer(
        handler if gate is None else gate.wrap(handler), observe=telemetry.observe
    )
    keys = frozenset({image.name, image.manifest.digest})
    advertiser = FakeAdvertiser({image.name: keys})
    peer_root = tmp_path / "peer-content"
    peer_blob = _put(peer_root, b"peer blob " * 100_000, "application/octet-stream")
    serving = RegistryServer(RegistryHandler(LocalStore(peer_root, FixedTags({}))))
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await nursery.start(serving.run, SERVING_HOST, 0)
        await nursery.start(registry.run, "127.0.0.1", 0)
        host, port = registry.addresses[0]
        me = Provider(NODE_ID, host, 5001, port)
        dht.providers = {
            f"{REGISTRY}/{REPOSITORY}:{TAG}": [me],
            image.manifest.digest: [me],
            # A peer that left: its record remains, nothing answers at its address.
            GONE_DIGEST: [Provider(PEER_ID, PEER_HOST, 5001, dead_port(PEER_HOST))],
            peer_blob.digest: [Provider(SERVING_ID, SERVING_HOST, 5001, serving.addresses[0][1])],
        }

        async def images() -> Mapping[str, str]:
            await trio.lowlevel.checkpoint()
            return {image.name: image.manifest.digest}

        view = NodeView(
            dht,
            advertiser,
            registry,
            telemetry,
            images,
            registry_authorization=None if auth is None else auth.header_value,
        )
        telemetry.registry.register(NodeCollector(view))
        web = MetricsServer(
            create_app(view, debug_web=debug_web), "127.0.0.1:0", stall_timeout=stall_timeout
        )
        view.metrics_addresses = web.urls
        await nursery.start(web.run)
        try:
            yield InProcessNode(image, telemetry, registry, dht, advertiser, web.urls[0], peer_blob)
        finally:
            nursery.cancel_scope.cancel()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_sync(
    url: str,
    *,
    method: str = "GET",
    body: object = None,
    timeout: float = 30,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One exchange; a body is sent as JSON unless `headers` name another Content-Type."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            headers = {k.lower(): v for k, v in response.getheaders()}
            return Reply(response.status, headers, response.read())
    except urllib.error.HTTPError as error:
        headers = {k.lower(): v for k, v in error.headers.items()}
        return Reply(error.code, headers, error.read())


async def http(
    url: str,
    *,
    method: str = "GET",
    body: object = None,
    socket_timeout: float = 30,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One exchange from a worker thread, so the servers in this trio.run keep running;
    a thread is not cancelled, so `socket_timeout` bounds each of its socket waits."""
    return await trio.to_thread.run_sync(
        functools.partial(
            http_sync, url, method=method, body=body, timeout=socket_timeout, headers=headers
        )
    )
