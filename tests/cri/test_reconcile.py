"""The advertiser against a fake containerd: image IDs, loose content, stale keys reconciled.

The content store is a real directory laid out as containerd's; the client is
a fake that lists images and feeds events, so each reconciliation path (settle
re-walk, local miss, audit) is tested alone and fast.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import trio

from mirror.advertise.tracker import Advertiser
from mirror.containerd.client import ContainerdClient
from mirror.containerd.model import ContentEvent, Descriptor, Image, ImageEvent
from mirror.oci.filters import ReferenceFilter

Event = ImageEvent | ContentEvent
NAME = "registry.example/team/app:v1"


def _put(root: Path, content: bytes) -> str:
    hex_digest = hashlib.sha256(content).hexdigest()
    path = root / "blobs" / "sha256" / hex_digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return f"sha256:{hex_digest}"


def _remove(root: Path, digest: str) -> None:
    (root / "blobs" / "sha256" / digest.removeprefix("sha256:")).unlink()


def _image(root: Path, seed: str) -> tuple[str, str, list[str]]:
    """(manifest, config, layers) of a small image written into `root`."""
    config = _put(root, json.dumps({"architecture": "amd64", "seed": seed}).encode())
    layers = [_put(root, f"{seed}-layer-{i}".encode()) for i in range(2)]
    manifest = _put(
        root,
        json.dumps(
            {
                "schemaVersion": 2,
                "config": {"mediaType": "c", "digest": config, "size": 1},
                "layers": [{"mediaType": "l", "digest": d, "size": 1} for d in layers],
            }
        ).encode(),
    )
    return manifest, config, layers


class FakePublisher:
    def __init__(self) -> None:
        self.provided: list[str] = []
        self.withdrawn: list[str] = []

    async def provide(self, keys: Iterable[str]) -> None:
        self.provided += keys

    async def withdraw(self, keys: Iterable[str]) -> None:
        self.withdrawn += keys


class FakeContainerd:
    def __init__(self) -> None:
        self.images: dict[str, str] = {}
        self.send, self.receive = trio.open_memory_channel[Event](100)
        self.subscribed = trio.Event()

    async def list_images(self, filters: Sequence[str] = ()) -> list[Image]:
        return [Image(name, Descriptor("m", digest, 1)) for name, digest in self.images.items()]

    async def get_image(self, name: str) -> Image | None:
        digest = self.images.get(name)
        return None if digest is None else Image(name, Descriptor("m", digest, 1))

    @asynccontextmanager
    async def subscribe(self, filters: Sequence[str] = ()) -> AsyncIterator[AsyncIterator[Event]]:
        self.subscribed.set()
        yield self.receive


async def _settled(advertiser: Advertiser, want: frozenset[str], within: float = 3.0) -> None:
    with trio.fail_after(within):
        while True:
            if advertiser.advertised() == want:
                return
            await trio.sleep(0.01)


def _advertiser(
    root: Path, fake: FakeContainerd, publisher: FakePublisher, **kwargs: float
) -> Advertiser:
    return Advertiser(
        cast(ContainerdClient, fake),
        publisher,
        root,
        ReferenceFilter(),
        namespace="k8s.io",
        **kwargs,  # type: ignore[arg-type]
    )


async def test_image_id_records_are_not_advertised(tmp_path: Path) -> None:
    manifest, config, layers = _image(tmp_path, "a")
    fake, publisher = FakeContainerd(), FakePublisher()
    fake.images = {
        NAME: manifest,
        config: manifest,
        f"registry.example/team/app@{manifest}": manifest,
    }
    advertiser = _advertiser(tmp_path, fake, publisher)
    await advertiser.resync()
    assert config not in advertiser.images
    assert set(advertiser.images) == {NAME, f"registry.example/team/app@{manifest}"}
    assert advertiser.advertised() == {manifest, config, *layers, NAME}
    assert not any(key.startswith("docker.io/") for key in publisher.provided)


async def test_content_create_provides_at_once_then_the_image_takes_it_over(
    tmp_path: Path,
) -> None:
    manifest, config, layers = _image(tmp_path, "b")
    fake, publisher = FakeContainerd(), FakePublisher()
    advertiser = _advertiser(tmp_path, fake, publisher, settle=0.05)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(advertiser.run)
        await fake.subscribed.wait()
        await fake.send.send(ContentEvent("create", "k8s.io", layers[0], 1))
        await _settled(advertiser, frozenset({layers[0]}))
        assert advertiser.loose == {layers[0]}
        fake.images[NAME] = manifest
        await fake.send.send(ImageEvent("create", "k8s.io", NAME))
        await _settled(advertiser, frozenset({manifest, config, *layers, NAME}))
        assert advertiser.loose == set()
        assert publisher.provided.count(layers[0]) == 1
        # Deleting the image withdraws everything, the once-loose layer included.
        del fake.images[NAME]
        await fake.send.send(ImageEvent("delete", "k8s.io", NAME))
        await _settled(advertiser, frozenset())
        assert layers[0] in publisher.withdrawn
        nursery.cancel_scope.cancel()


async def test_layers_discarded_without_an_event_are_withdrawn_after_settle(
    tmp_path: Path,
) -> None:
    manifest, config, layers = _image(tmp_path, "c")
    fake, publisher = FakeContainerd(), FakePublisher()
    advertiser = _advertiser(tmp_path, fake, publisher, settle=0.1, audit_period=3600)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(advertiser.run)
        await fake.subscribed.wait()
        fake.images[NAME] = manifest
        await fake.send.send(ImageEvent("create", "k8s.io", NAME))
        await _settled(advertiser, frozenset({manifest, config, *layers, NAME}))
        for layer in layers:  # what discard_unpacked_layers does: no /content/delete
            _remove(tmp_path, layer)
        await _settled(advertiser, frozenset({manifest, config, NAME}))
        assert set(layers) <= set(publisher.withdrawn)
        assert advertiser.stale_withdrawn == 0  # found by the settle walk, not counted stale
        nursery.cancel_scope.cancel()


async def test_local_miss_withdraws_an_advertised_key_at_once(tmp_path: Path) -> None:
    manifest, config, layers = _image(tmp_path, "d")
    fake, publisher = FakeContainerd(), FakePublisher()
    fake.images[NAME] = manifest
    advertiser = _advertiser(tmp_path, fake, publisher, settle=3600, audit_period=3600)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(advertiser.run)
        await _settled(advertiser, frozenset({manifest, config, *layers, NAME}))
        _remove(tmp_path, layers[1])
        advertiser.local_miss("sha256:" + "0" * 64)  # not advertised: ignored
        advertiser.local_miss(config)  # advertised and present: kept
        advertiser.local_miss(layers[1])
        await _settled(advertiser, frozenset({manifest, config, layers[0], NAME}), within=1.0)
        assert advertiser.stale_withdrawn == 1
        # A tag key the node no longer has: the image is walked again and withdrawn.
        del fake.images[NAME]
        advertiser.local_miss(NAME)
        await _settled(advertiser, frozenset(), within=1.0)
        nursery.cancel_scope.cancel()


async def test_audit_stats_every_advertised_digest_over_its_period(tmp_path: Path) -> None:
    manifest, config, layers = _image(tmp_path, "e")
    other_manifest, other_config, other_layers = _image(tmp_path, "f")
    fake, publisher = FakeContainerd(), FakePublisher()
    fake.images = {NAME: manifest, "registry.example/team/other:v1": other_manifest}
    advertiser = _advertiser(
        tmp_path, fake, publisher, settle=3600, audit_period=0.5, audit_batch=2
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(advertiser.run)
        await _settled(
            advertiser,
            frozenset(
                {
                    manifest,
                    config,
                    *layers,
                    NAME,
                    other_manifest,
                    other_config,
                    *other_layers,
                    "registry.example/team/other:v1",
                }
            ),
        )
        _remove(tmp_path, layers[0])
        _remove(tmp_path, other_layers[1])
        await _settled(
            advertiser,
            frozenset(
                {
                    manifest,
                    config,
                    layers[1],
                    NAME,
                    other_manifest,
                    other_config,
                    other_layers[0],
                    "registry.example/team/other:v1",
                }
            ),
        )
        assert advertiser.stale_withdrawn == 2
        nursery.cancel_scope.cancel()


async def test_loose_content_waits_for_the_image_when_registries_are_filtered(
    tmp_path: Path,
) -> None:
    manifest, config, layers = _image(tmp_path, "g")
    fake, publisher = FakeContainerd(), FakePublisher()
    advertiser = Advertiser(
        cast(ContainerdClient, fake),
        publisher,
        tmp_path,
        ReferenceFilter.build(["https://registry.example"], []),
        namespace="k8s.io",
    )
    await advertiser._handle(ContentEvent("create", "k8s.io", layers[0], 1))
    assert advertiser.advertised() == frozenset() and publisher.provided == []
    fake.images[NAME] = manifest
    await advertiser._handle(ImageEvent("create", "k8s.io", NAME))
    assert advertiser.advertised() == {manifest, config, *layers, NAME}


async def test_a_loose_key_discarded_without_an_event_is_withdrawn_after_settle(
    tmp_path: Path,
) -> None:
    _, _, layers = _image(tmp_path, "g")
    fake, publisher = FakeContainerd(), FakePublisher()
    advertiser = _advertiser(tmp_path, fake, publisher, settle=0.1, audit_period=3600)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(advertiser.run)
        await fake.subscribed.wait()
        await advertiser.content_committed(layers[0])  # a download just committed
        await _settled(advertiser, frozenset({layers[0]}))
        _remove(tmp_path, layers[0])  # GC, no /content/delete
        await _settled(advertiser, frozenset(), within=2.0)
        assert layers[0] in publisher.withdrawn and advertiser.loose == set()
        nursery.cancel_scope.cancel()
