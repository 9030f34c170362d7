"""Measure Image Pull: find the peers of an image, then pull it through this node.

The lookup asks the DHT afresh (no provider cache) for the tag's key and the
manifest's digest, timing each provider as it arrives. The pull goes through
this node's own registry port over plain HTTP with `?ns=<registry>` (and the
basic auth credentials the port requires, if any), exactly as containerd would:
the top manifest, this node's platform manifest when the top is an index, the
config and every layer, one after the other, each timed.
"""

from __future__ import annotations

import contextlib
import json
import platform
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from dht import Provider
from mirror.metrics import MEASURE_HEADER
from mirror.mirroring.mirror import PEER_HEADER
from mirror.mirroring.peer import PeerError, PeerResponse, request_head
from mirror.oci.distribution import PathError, parse_distribution_path, valid_registry
from mirror.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES, MAX_MANIFEST_SIZE
from mirror.oci.reference import ImageName, parse_image_name

MANIFEST_ACCEPT = ", ".join(sorted(MANIFEST_TYPES))
LOOKUP_LIMIT = 3.0
_ARCHES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
}


class InvalidReference(ValueError):
    """The image reference cannot be parsed; the message says why."""


class PullFailed(Exception):
    pass


class NotFound(PullFailed):
    """The registry port answered 404: neither this node nor any peer serves it."""


def parse_reference(text: object) -> ImageName:
    """Spegel's lenient parsing (docker.io, library/, latest), then the spec's patterns."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReference(
            "image reference is empty: give one like docker.io/library/nginx:1.27"
        )
    try:
        image = parse_image_name(text.strip(), lenient=True)
    except ValueError as exc:
        raise InvalidReference(str(exc)) from None
    if not valid_registry(image.registry):
        raise InvalidReference(f"invalid registry {image.registry!r} in {text.strip()!r}")
    for reference in (image.tag, image.digest):
        if reference is None:
            continue
        try:
            parse_distribution_path(f"/v2/{image.repository}/manifests/{reference}")
        except PathError as exc:
            raise InvalidReference(f"{exc.message} in {text.strip()!r}") from None
    return image


def local_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    return "linux", _ARCHES.get(machine, machine)


@dataclass
class PeerFound:
    address: str  # its registry port (HTTP), where pulls go
    router: str  # its router port (UDP): the address in the page's peer table
    node_id: str
    seconds: float
    self: bool


@dataclass
class Lookup:
    key: str
    peers: list[PeerFound] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Item:
    kind: str  # "index" | "manifest" | "config" | "layer"
    digest: str
    media_type: str
    size: int
    seconds: float
    source: str  # "local" or the peer's address


@dataclass
class PullReport:
    items: list[Item] = field(default_factory=list)
    error: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.items)

    @property
    def seconds(self) -> float:
        """Time spent pulling, without the digest lookup made in between."""
        return sum(item.seconds for item in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "items": [asdict(item) for item in self.items],
            "seconds": self.seconds,
            "total_bytes": self.total_bytes,
            "throughput": self.total_bytes / self.seconds if self.seconds > 0 else 0.0,
            "error": self.error,
        }


ProviderLookup = Callable[[str], AsyncIterator[Provider]]


async def lookup(find: ProviderLookup, key: str, is_self: Callable[[Provider], bool]) -> Lookup:
    result = Lookup(key)
    started = trio.current_time()
    with trio.move_on_after(LOOKUP_LIMIT):
        async with contextlib.aclosing(find(key)) as providers:  # type: ignore[type-var]
            async for provider in providers:
                result.peers.append(
                    PeerFound(
                        f"{provider.host}:{provider.registry_port}",
                        f"{provider.host}:{provider.udp_port}",
                        provider.node_id.hex(),
                        trio.current_time() - started,
                        is_self(provider),
                    )
                )
    result.seconds = trio.current_time() - started
    return result


@dataclass
class Fetched:
    status: int
    body: bytes
    size: int
    media_type: str
    digest: str
    source: str


class RegistryClient:
    """GETs on this node's own registry port; one connection per request."""

    def __init__(
        self, host: str, port: int, registry: str, authorization: str | None = None
    ) -> None:
        self.host, self.port, self.registry = host, port, registry
        self.authorization = authorization

    async def get(self, repository: str, section: str, reference: str, *, keep: bool) -> Fetched:
        target = f"/v2/{repository}/{section}/{reference}?ns={self.registry}"
        # Marked, so the node counts these apart from containerd's (metrics.py).
        headers = [("Accept", MANIFEST_ACCEPT), ("Connection", "close"), (MEASURE_HEADER, "1")]
        if self.authorization is not None:
            headers.append(("Authorization", self.authorization))
        try:
            peer = await request_head(self.host, self.port, "GET", target, headers)
        except (PeerError, OSError) as exc:
            raise PullFailed(f"cannot reach this node's registry port: {exc}") from None
        try:
            if peer.status != 200:
                body = await _read(peer, min(peer.content_length, 64 * 1024), keep=True)
                text = _error_text(body)
                if peer.status == 404:
                    raise NotFound(text)
                raise PullFailed(f"GET {target} answered {peer.status}: {text}")
            if keep and peer.content_length > MAX_MANIFEST_SIZE:
                raise PullFailed(f"{target}: manifest larger than {MAX_MANIFEST_SIZE} bytes")
            body = await _read(peer, peer.content_length, keep=keep)
        finally:
            peer.close()
        peer_name = peer.header(PEER_HEADER.lower())
        return Fetched(
            peer.status,
            body,
            peer.content_length,
            peer.header("content-type") or "",
            peer.header("docker-content-digest") or reference,
            peer_name or "local",
        )


async def _read(peer: PeerResponse, length: int, *, keep: bool) -> bytes:
    """Read `length` body bytes; keep them, or only count them (layers can be large)."""
    kept = bytearray(peer.early_body[:length]) if keep else bytearray()
    received = min(len(peer.early_body), length)
    buffer = bytearray(1024 * 1024)
    view = memoryview(buffer)
    while received < length:
        count = await peer.sock.recv_into(view[: min(len(buffer), length - received)])
        if count == 0:
            raise PullFailed(f"connection closed after {received} of {length} bytes")
        if keep:
            kept += view[:count]
        received += count
    return bytes(kept)


def _not_found(kind: str, reference: str, *, first: bool, why: str) -> str:
    """A 404 in words: nobody has it, or this node does not mirror it (its filters)."""
    if "filtered" in why:
        return (
            "this node does not mirror this image: its --mirrored-registries or "
            "--registry-filters leave it out"
        )
    if first:
        return "no peer has this image, and this node does not hold it"
    return f"no peer has its {kind} {reference}, and this node does not hold it"


def _error_text(body: bytes) -> str:
    try:
        document = json.loads(body)
        return str(document["errors"][0]["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        return body.decode("utf-8", "replace")[:200] or "no body"


def choose_manifest(index: dict[str, Any], wanted: tuple[str, str]) -> dict[str, Any]:
    """This node's platform from an index, else the first real image in it."""
    manifests = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    if not manifests:
        raise PullFailed("the index lists no manifests")

    def platform_of(m: dict[str, Any]) -> tuple[str, str]:
        p = m.get("platform") or {}
        return str(p.get("os", "")), str(p.get("architecture", ""))

    for m in manifests:
        if platform_of(m) == wanted:
            return m
    return next((m for m in manifests if platform_of(m)[0] != "unknown"), manifests[0])


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise PullFailed(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise PullFailed(f"{what} is not a JSON object")
    return document


async def pull(
    client: RegistryClient,
    image: ImageName,
    report: PullReport,
    on_top_digest: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Pull `image`, appending one item per request to `report` as it goes."""

    async def fetch(kind: str, section: str, reference: str, media_type: str = "") -> Fetched:
        started = trio.current_time()
        keep = section != "blobs"
        try:
            fetched = await client.get(image.repository, section, reference, keep=keep)
        except NotFound as exc:
            why = _not_found(kind, reference, first=not report.items, why=str(exc))
            raise PullFailed(why) from None
        report.items.append(
            Item(
                kind,
                fetched.digest,
                media_type or fetched.media_type,
                fetched.size,
                trio.current_time() - started,
                fetched.source,
            )
        )
        return fetched

    reference = image.digest or image.tag or "latest"
    top = await fetch("manifest", "manifests", reference)
    if on_top_digest is not None:
        await on_top_digest(top.digest)
    document = _json(top.body, "the manifest")
    manifest = top
    if top.media_type in INDEX_TYPES or "manifests" in document:
        report.items[-1].kind = "index"
        chosen = choose_manifest(document, local_platform())
        manifest = await fetch(
            "manifest", "manifests", str(chosen["digest"]), str(chosen.get("mediaType", ""))
        )
        document = _json(manifest.body, "the platform manifest")
    config = document.get("config")
    layers = document.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise PullFailed("the manifest has no config or layers")
    await fetch("config", "blobs", str(config["digest"]), str(config.get("mediaType", "")))
    for layer in layers:
        await fetch("layer", "blobs", str(layer["digest"]), str(layer.get("mediaType", "")))


async def measure(
    text: object,
    *,
    find: ProviderLookup,
    is_self: Callable[[Provider], bool],
    registry_endpoint: tuple[str, int],
    time_limit: float = 30.0,
    authorization: str | None = None,
) -> dict[str, Any]:
    """Run a whole measurement; partial results come back when the time limit strikes."""
    image = parse_reference(text)
    lookups: list[Lookup] = []
    report = PullReport()
    error: str | None = None
    started = trio.current_time()

    async def lookup_digest(digest: str) -> None:
        if image.tag is not None:
            lookups.append(await lookup(find, digest, is_self))

    with trio.move_on_after(time_limit) as limit:
        if image.tag is not None:
            lookups.append(await lookup(find, image.tag_key() or "", is_self))
        elif image.digest is not None:
            lookups.append(await lookup(find, image.digest, is_self))
        client = RegistryClient(*registry_endpoint, image.registry, authorization)
        try:
            await pull(client, image, report, on_top_digest=lookup_digest)
        except PullFailed as exc:
            report.error = str(exc)
    if limit.cancelled_caught:
        error = f"time limit of {time_limit:g}s reached; results are partial"
    return {
        "image": {
            "reference": str(image),
            "registry": image.registry,
            "repository": image.repository,
            "tag": image.tag,
            "digest": image.digest,
        },
        "platform": "/".join(local_platform()),
        "lookups": [asdict(lk) for lk in lookups],
        "pull": report.to_json(),
        "seconds": trio.current_time() - started,
        "error": error,
    }
