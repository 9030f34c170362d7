"""ContainerdClient against a real containerd daemon."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from bench.kit.containerd import ContainerdNode
from bench.kit.images import generate_image, push_image
from bench.kit.registry import UpstreamRegistry
from mirror.containerd.client import (
    ContainerdClient,
    ContainerdUnavailable,
    ContentEvent,
    ContentInfo,
    Event,
    EventStream,
    ImageEvent,
    event_filters,
)

from .conftest import import_archive
from .oci_archive import MANIFEST, OciArchive

pytestmark = pytest.mark.integration

PROBE_PREFIX = "probe.test/barrier:"


async def ctr(node: ContainerdNode, *args: str, namespace: str | None = None) -> None:
    await trio.to_thread.run_sync(functools.partial(node.ctr, *args, namespace=namespace))


def client_for(node: ContainerdNode, timeout: float = 5.0, **kwargs: int) -> ContainerdClient:
    return ContainerdClient(node.address, node.namespace, timeout=timeout, **kwargs)


async def wait_live(
    node: ContainerdNode, events: EventStream, image: str, namespace: str | None = None
) -> None:
    """Return once `events` is live on the server, by seeing a probe tag's create event.

    Subscribe does not report when containerd has registered the subscriber, so
    an event triggered right away could be missed. Later probe events may still
    arrive: tests drop names starting with PROBE_PREFIX.
    """
    with trio.fail_after(10):
        while True:
            probe = PROBE_PREFIX + uuid.uuid4().hex[:12]
            await ctr(node, "images", "tag", image, probe, namespace=namespace)
            with trio.move_on_after(0.5):
                async for event in events:
                    if isinstance(event, ImageEvent) and event.name == probe:
                        return


async def next_events(events: EventStream, n: int) -> list[Event]:
    got: list[Event] = []
    with trio.fail_after(10):
        async for event in events:
            if isinstance(event, ImageEvent) and event.name.startswith(PROBE_PREFIX):
                continue
            got.append(event)
            if len(got) == n:
                break
    return got


def _all_threads_stopped(pid: int) -> bool:
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return bool(states) and all(state in ("T", "t") for state in states)


@contextmanager
def frozen(node: ContainerdNode) -> Iterator[None]:
    """containerd stopped with SIGSTOP: connections stay open, nothing answers. Yields
    once the kernel shows every thread stopped (a busy machine may take a moment)."""
    assert node.pid is not None
    os.kill(node.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while not _all_threads_stopped(node.pid):
            assert time.monotonic() < deadline, "containerd did not stop on SIGSTOP"
            time.sleep(0.01)
        yield
    finally:
        os.kill(node.pid, signal.SIGCONT)


async def test_version(node: ContainerdNode) -> None:
    client = client_for(node)
    try:
        version = await client.version()
    finally:
        await client.aclose()
    assert version
    assert version in node.ctr("version").stdout


async def test_list_and_get_images(node: ContainerdNode, imported: OciArchive) -> None:
    client = client_for(node)
    try:
        images = {image.name: image for image in await client.list_images()}
        filtered = await client.list_images([f'name=="{imported.name}"'])
        image = await client.get_image(imported.name)
        missing = await client.get_image("example.test/library/absent:1")
    finally:
        await client.aclose()

    assert imported.name in images
    assert filtered == [images[imported.name]]
    assert image == images[imported.name]
    assert image.target.media_type == MANIFEST
    assert image.target.digest == imported.manifest.digest
    assert image.target.size == imported.manifest.size
    assert missing is None


async def test_images_are_per_namespace(node: ContainerdNode, imported: OciArchive) -> None:
    client = ContainerdClient(node.address, "empty-namespace")
    try:
        assert await client.list_images() == []
        assert await client.get_image(imported.name) is None
    finally:
        await client.aclose()


async def test_content_info(node: ContainerdNode, imported: OciArchive) -> None:
    client = client_for(node)
    try:
        manifest = await client.content_info(imported.manifest.digest)
        layer = await client.content_info(imported.layer.digest)
        absent = await client.content_info("sha256:" + "0" * 64)
        listed = {info.digest: info for info in await client.list_content()}
    finally:
        await client.aclose()

    assert manifest is not None and layer is not None
    assert manifest.size == imported.manifest.size
    assert layer == ContentInfo(imported.layer.digest, imported.layer.size, layer.labels)
    # containerd records the manifest's references as GC labels on import.
    assert imported.config.digest in manifest.labels.values()
    assert imported.layer.digest in manifest.labels.values()
    assert absent is None
    for blob in (imported.manifest, imported.config, imported.layer):
        assert listed[blob.digest].size == blob.size


async def test_content_root(node: ContainerdNode) -> None:
    client = client_for(node)
    try:
        root = await client.content_root()
    finally:
        await client.aclose()
    assert root == node.content_path
    assert root is not None and root.is_dir()


async def test_subscribe_image_events_of_one_namespace(
    node: ContainerdNode, imported: OciArchive
) -> None:
    tag = f"example.test/library/demo:{uuid.uuid4().hex[:8]}"
    client = client_for(node)
    try:
        async with client.subscribe(event_filters(node.namespace, "^/images/")) as events:
            await wait_live(node, events, imported.name)
            await ctr(node, "images", "tag", imported.name, tag)
            # Another namespace's events must be filtered out on the server.
            await trio.to_thread.run_sync(import_archive, node, imported.path, "elsewhere")
            await ctr(node, "images", "rm", tag)
            got = await next_events(events, 2)
    finally:
        await client.aclose()
    assert got == [
        ImageEvent("create", node.namespace, tag, {}),
        ImageEvent("delete", node.namespace, tag, {}),
    ]


async def test_subscribe_content_delete(node: ContainerdNode, archive: OciArchive) -> None:
    # A namespace of its own, so that deleting a blob breaks no other test.
    namespace = "content-events"
    await trio.to_thread.run_sync(import_archive, node, archive.path, namespace)
    client = client_for(node)
    try:
        async with client.subscribe(event_filters(namespace)) as events:
            await wait_live(node, events, archive.name, namespace)
            await ctr(node, "content", "rm", archive.layer.digest, namespace=namespace)
            got = await next_events(events, 1)
    finally:
        await client.aclose()
    assert got == [ContentEvent("delete", namespace, archive.layer.digest, 0)]


async def test_pulled_image(node: ContainerdNode, tmp_path: Path) -> None:
    """An image pulled from a real registry, as the kubelet path would, lists as pushed."""
    generated = generate_image(
        tmp_path / "layout", name="test/pulled", tag="v1", seed=7, total_size=64 << 10, layers=2
    )
    with UpstreamRegistry(tmp_path / "registry") as registry:
        ref = generated.ref(registry.host)
        await trio.to_thread.run_sync(push_image, generated.layout_dir, "v1", ref)
        await trio.to_thread.run_sync(functools.partial(node.pull, ref, unpack=False))

    client = client_for(node)
    try:
        image = await client.get_image(ref)
        infos = [await client.content_info(blob.digest) for blob in generated.blobs()]
    finally:
        await client.aclose()
    assert image is not None
    assert (image.target.digest, image.target.size) == (generated.digest, generated.top.size)
    assert image.target.media_type == generated.top.media_type
    assert [info.size if info else None for info in infos] == [b.size for b in generated.blobs()]


async def test_deadline_when_containerd_hangs(node: ContainerdNode) -> None:
    client = client_for(node, timeout=0.5)
    try:
        await client.version()  # connected before the daemon freezes
        with frozen(node):
            started = trio.current_time()
            with pytest.raises(ContainerdUnavailable) as info:
                await client.list_images()
            assert trio.current_time() - started < 3
            assert info.value.code == "DEADLINE_EXCEEDED"

            # A Trio cancel scope cuts a call short of its own deadline.
            slow = client_for(node, timeout=30.0)
            with trio.move_on_after(0.2) as scope:
                await slow.version()
            assert scope.cancelled_caught
            assert trio.current_time() - started < 5
            await slow.aclose()
        assert await client.version()
    finally:
        await client.aclose()


async def test_leaving_subscriptions_frees_their_thread(
    node: ContainerdNode, imported: OciArchive
) -> None:
    client = client_for(node, max_subscriptions=1)
    try:
        with trio.fail_after(10):
            for _ in range(2):
                async with client.subscribe(event_filters(node.namespace)) as events:
                    await wait_live(node, events, imported.name)
            # An error in the body leaves the subscription as it is, unwrapped.
            with pytest.raises(LookupError):
                async with client.subscribe(event_filters(node.namespace)) as events:
                    await wait_live(node, events, imported.name)
                    raise LookupError("from the body")
            async with client.subscribe(event_filters(node.namespace)) as events:
                await wait_live(node, events, imported.name)
    finally:
        await client.aclose()


async def test_survives_containerd_restart(own_node: ContainerdNode, archive: OciArchive) -> None:
    node = own_node
    await trio.to_thread.run_sync(import_archive, node, archive.path, None)
    client = client_for(node, timeout=2.0)
    try:
        assert await client.version()

        # The daemon dies: the subscription in flight ends with ContainerdUnavailable.
        with trio.fail_after(5), pytest.raises(ContainerdUnavailable):
            async with client.subscribe(event_filters(node.namespace)) as events:
                await wait_live(node, events, archive.name)
                await trio.to_thread.run_sync(node.stop)
                async for _ in events:
                    pass

        # While it is down, calls fail fast, well within their deadline.
        started = trio.current_time()
        with pytest.raises(ContainerdUnavailable):
            await client.list_images()
        assert trio.current_time() - started < client.timeout

        # Back up: the same client works again, events included.
        await trio.to_thread.run_sync(node.start)
        started = trio.current_time()
        with trio.fail_after(5):
            while True:
                try:
                    images = await client.list_images()
                    break
                except ContainerdUnavailable:
                    await trio.sleep(0.05)
        assert trio.current_time() - started < 3
        assert archive.name in {image.name for image in images}
        async with client.subscribe(event_filters(node.namespace)) as events:
            await wait_live(node, events, archive.name)
    finally:
        await client.aclose()


@contextmanager
def _held_ingest(node: ContainerdNode, ref: str, size: int) -> Iterator[None]:
    """`ctr content ingest` fed by a pipe held open: an ingest that stays active."""
    command = [str(node.ctr_binary), "--address", str(node.address), "--namespace"]
    command += [node.namespace, "content", "ingest", "--expected-size", str(size), ref]
    feeder = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert feeder.stdin is not None
        feeder.stdin.write(b"x" * 4096)
        feeder.stdin.flush()
        yield
    finally:
        feeder.kill()
        feeder.wait()


async def test_a_download_in_progress_is_listed_and_aborted(node: ContainerdNode) -> None:
    ref = f"layer-sha256:{uuid.uuid4().hex}"
    client = client_for(node)
    try:
        with _held_ingest(node, ref, 1_000_000):
            listed = []
            for _ in range(200):
                listed = [s for s in await client.ingests() if s.ref == ref]
                if listed:
                    break
                await trio.sleep(0.05)
            assert [status.total for status in listed] == [1_000_000]
            assert await client.abort_ingest(ref) is True
            assert ref not in {s.ref for s in await client.ingests()}
            assert await client.abort_ingest(ref) is False  # nothing left to abort
    finally:
        await client.aclose()
