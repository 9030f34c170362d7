"""A Trio client for containerd's gRPC API: images, content metadata, events.

Usage::

    from mirror.containerd.client import (
        ContainerdClient, ContainerdError, ContainerdUnavailable,
        Descriptor, Image, ContentInfo, ImageEvent, ContentEvent,
    )

    client = ContainerdClient(address="/run/containerd/containerd.sock",
                              namespace="k8s.io", timeout=5.0)
    await client.version()                        -> str ("1.6.20~ds1", "v2.0.0", ...)
    await client.list_images(filters=())          -> list[Image]
    await client.get_image(name)                  -> Image | None
    await client.content_info(digest)             -> ContentInfo | None
    await client.list_content()                   -> list[ContentInfo]
    await client.ingests()                        -> list[IngestStatus]
    await client.abort_ingest(ref)                -> bool (False: no such ingest)
    await client.content_root()                   -> Path | None
    async with client.subscribe(filters) as events:
        async for ev in events:                   # ImageEvent | ContentEvent
            ...
    await client.aclose()

Values are frozen dataclasses:
``Descriptor(media_type, digest, size, annotations)``,
``Image(name, target: Descriptor, labels)``, ``ContentInfo(digest, size, labels)``,
``ImageEvent(kind, namespace, name, labels)`` and
``ContentEvent(kind, namespace, digest, size)`` with ``kind`` one of
``"create" | "update" | "delete"``.

Namespace: every call carries the ``containerd-namespace`` header. Events are
not namespaced on the server side: select them with filters, in containerd's
filter syntax, e.g. ``event_filters("k8s.io")`` gives
``['topic~="^/(images|content)/",namespace=="k8s.io"']``. Filters in a list are
ORed; terms joined by commas within one filter are ANDed.

Errors: a call that containerd refuses raises ContainerdError; one that cannot
reach containerd, loses it mid-call, or misses its deadline (``timeout``
seconds, applied to every call but a subscription) raises ContainerdUnavailable.
Neither breaks the client: the channel reconnects by itself (within about a
second of containerd coming back), so the next call just works. A subscription
has no deadline; it ends with ContainerdUnavailable when containerd goes away,
and the caller subscribes again (and resyncs: events in between are lost).

Concurrency: grpcio is blocking, so each call runs in a Trio worker thread with
``abandon_on_cancel=True``; cancelling the caller cancels the RPC. Each
subscription holds a worker thread for its whole life, taken from the client's
own CapacityLimiter (``max_subscriptions``) so that streams cannot starve the
short calls of threads.

Works with containerd 1.6 and 2.x alike: the services and message fields we use
are the same; 2.x also emits ContentCreate events, 1.x only ContentDelete.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import trio
from google.protobuf.message import Message

from mirror.containerd import rpc
from mirror.containerd.errors import ContainerdError, ContainerdUnavailable
from mirror.containerd.events import Event, decode_envelope
from mirror.containerd.model import (
    ContentEvent,
    ContentInfo,
    Descriptor,
    Image,
    ImageEvent,
    IngestStatus,
    content_info_from_pb,
    image_from_pb,
    ingest_status_from_pb,
)
from mirror.containerd.proto import content_pb2, events_pb2, images_pb2, introspection_pb2

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_NAMESPACE",
    "ContainerdClient",
    "ContainerdError",
    "ContainerdUnavailable",
    "ContentEvent",
    "ContentInfo",
    "Descriptor",
    "Event",
    "EventStream",
    "Image",
    "ImageEvent",
    "event_filters",
]

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "k8s.io"
CONTENT_PLUGIN_TYPE = "io.containerd.content.v1"
EVENT_BUFFER = 256


def event_filters(namespace: str, topics: str = "^/(images|content)/") -> list[str]:
    """A Subscribe filter for `topics` (a regular expression) in one namespace."""
    return [f"topic~={_quote(topics)},namespace=={_quote(namespace)}"]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _target(address: str) -> str:
    if "://" in address or address.startswith("unix:"):
        return address
    if address.startswith("/"):
        return f"unix://{address}"
    return f"unix:{address}"


class EventStream:
    """The events of one subscription, in order; ends with ContainerdUnavailable."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Event]) -> None:
        self._receive = receive
        self._error: ContainerdError | None = None

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None

    def _fail(self, error: ContainerdError) -> None:
        self._error = error


class ContainerdClient:
    """See the module docstring. One client per containerd socket and namespace."""

    def __init__(
        self,
        address: str | os.PathLike[str] = DEFAULT_ADDRESS,
        namespace: str = DEFAULT_NAMESPACE,
        timeout: float = 5.0,
        *,
        max_subscriptions: int = 4,
    ) -> None:
        self.address = os.fspath(address)
        self.namespace = namespace
        self.timeout = timeout
        self._metadata = (("containerd-namespace", namespace),)
        self._channel: grpc.Channel | None = None
        self._stubs: rpc.Stubs | None = None
        self._closed = False
        self._stream_limiter = trio.CapacityLimiter(max_subscriptions)

    # -- queries -----------------------------------------------------------

    async def version(self) -> str:
        response = await self._call("Version", self._get_stubs().version, rpc.EMPTY)
        return response.version

    async def list_images(self, filters: Sequence[str] = ()) -> list[Image]:
        request = images_pb2.ListImagesRequest(filters=list(filters))
        response = await self._call("Images.List", self._get_stubs().image_list, request)
        return [image_from_pb(image) for image in response.images]

    async def get_image(self, name: str) -> Image | None:
        request = images_pb2.GetImageRequest(name=name)
        try:
            response = await self._call("Images.Get", self._get_stubs().image_get, request)
        except ContainerdError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise
        return image_from_pb(response.image)

    async def content_info(self, digest: str) -> ContentInfo | None:
        request = content_pb2.InfoRequest(digest=digest)
        try:
            response = await self._call("Content.Info", self._get_stubs().content_info, request)
        except ContainerdError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise
        return content_info_from_pb(response.info)

    async def list_content(self) -> list[ContentInfo]:
        responses = await self._call_stream(
            "Content.List", self._get_stubs().content_list, content_pb2.ListContentRequest()
        )
        return [content_info_from_pb(info) for response in responses for info in response.info]

    async def ingests(self) -> list[IngestStatus]:
        """The downloads in progress in this namespace."""
        response = await self._call(
            "Content.ListStatuses",
            self._get_stubs().content_statuses,
            content_pb2.ListStatusesRequest(),
        )
        return [ingest_status_from_pb(status) for status in response.statuses]

    async def abort_ingest(self, ref: str) -> bool:
        """Drop a download in progress and its bytes; False when there was none."""
        request = content_pb2.AbortRequest(ref=ref)
        try:
            await self._call("Content.Abort", self._get_stubs().content_abort, request)
        except ContainerdError as exc:
            if exc.code == "NOT_FOUND":
                return False
            raise
        return True

    async def content_root(self) -> Path | None:
        """Where the content store keeps its files, as the content plugin exports it."""
        request = introspection_pb2.PluginsRequest(filters=[f"type=={_quote(CONTENT_PLUGIN_TYPE)}"])
        response = await self._call("Introspection.Plugins", self._get_stubs().plugins, request)
        for plugin in response.plugins:
            root = plugin.exports.get("root")
            if root:
                return Path(root)
        return None

    # -- events --------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, filters: Sequence[str] = ()) -> AsyncIterator[EventStream]:
        """Follow containerd's events; see the module docstring for filters and ending."""
        request = events_pb2.SubscribeRequest(filters=list(filters))
        call = self._get_stubs().subscribe(request, metadata=self._metadata)
        send, receive = trio.open_memory_channel[Event](EVENT_BUFFER)
        stream = EventStream(receive)
        body_error: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_events, call, send, stream)
                try:
                    yield stream
                except Exception as exc:  # noqa: BLE001
                    # Re-raised below, outside the nursery, which would wrap it
                    # in an ExceptionGroup: callers catch ContainerdUnavailable.
                    body_error = exc
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            # Unblocks the worker thread, abandoned or not.
            call.cancel()
        if body_error is not None:
            raise body_error

    async def _pump_events(
        self,
        call: grpc._CallIterator[events_pb2.Envelope],
        send: trio.MemorySendChannel[Event],
        stream: EventStream,
    ) -> None:
        async with send:
            try:
                await trio.to_thread.run_sync(
                    _read_events, call, send, limiter=self._stream_limiter, abandon_on_cancel=True
                )
            except ContainerdError as exc:
                stream._fail(exc)

    # -- lifetime ------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the channel; calls in flight fail, later calls raise ContainerdError."""
        self._closed = True
        channel, self._channel, self._stubs = self._channel, None, None
        if channel is not None:
            channel.close()

    async def __aenter__(self) -> ContainerdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- plumbing --------------------------------------------------------------

    def _get_stubs(self) -> rpc.Stubs:
        if self._closed:
            raise ContainerdError("containerd client is closed")
        if self._stubs is None:
            self._channel = grpc.insecure_channel(
                _target(self.address), options=list(rpc.CHANNEL_OPTIONS)
            )
            self._stubs = rpc.Stubs(self._channel)
        return self._stubs

    async def _call(
        self, what: str, method: rpc.Unary[rpc.ResponseT], request: Message
    ) -> rpc.ResponseT:
        future = method.future(request, timeout=self.timeout, metadata=self._metadata)
        try:
            return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        except grpc.RpcError as exc:
            raise rpc.translate(exc, what) from exc
        finally:
            future.cancel()

    async def _call_stream(
        self, what: str, method: rpc.Stream[rpc.ResponseT], request: Message
    ) -> list[rpc.ResponseT]:
        call = method(request, timeout=self.timeout, metadata=self._metadata)
        try:
            return await trio.to_thread.run_sync(list, call, abandon_on_cancel=True)
        except grpc.RpcError as exc:
            raise rpc.translate(exc, what) from exc
        finally:
            call.cancel()


def _read_events(call: Iterable[events_pb2.Envelope], send: trio.MemorySendChannel[Event]) -> None:
    """Worker thread: decode the stream into `send` until it ends or fails."""
    try:
        for envelope in call:
            event = decode_envelope(envelope)
            if event is not None:
                trio.from_thread.run(send.send, event)
    except grpc.RpcError as exc:
        raise rpc.translate(exc, "Events.Subscribe") from exc
    raise ContainerdUnavailable("Events.Subscribe: containerd ended the event stream")
