"""Hand-written gRPC stubs for the containerd services we call, and error mapping.

Method paths are containerd's; request/response (de)serialisation goes through
our own message classes. Blocking: callers run these in worker threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from mirror.containerd.errors import ContainerdError, ContainerdUnavailable
from mirror.containerd.proto import (
    content_pb2,
    events_pb2,
    images_pb2,
    introspection_pb2,
    version_pb2,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# grpc's default reconnect backoff grows to 120 s; containerd is local, and a
# restarted daemon should be usable within about a second.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_http_proxy", 0),
)


ResponseT = TypeVar("ResponseT", bound=Message)
if TYPE_CHECKING:  # grpc's classes are generic only in its type stubs
    Unary = grpc.UnaryUnaryMultiCallable[Message, ResponseT]
    Stream = grpc.UnaryStreamMultiCallable[Message, ResponseT]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _unary(channel: grpc.Channel, path: str, response: type[ResponseT]) -> Unary[ResponseT]:
    return channel.unary_unary(
        path, request_serializer=_serialize, response_deserializer=response.FromString
    )


def _stream(channel: grpc.Channel, path: str, response: type[ResponseT]) -> Stream[ResponseT]:
    return channel.unary_stream(
        path, request_serializer=_serialize, response_deserializer=response.FromString
    )


class Stubs:
    """One multi-callable per containerd method we use, bound to one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        images = "/containerd.services.images.v1.Images/"
        content = "/containerd.services.content.v1.Content/"
        self.image_get = _unary(channel, images + "Get", images_pb2.GetImageResponse)
        self.image_list = _unary(channel, images + "List", images_pb2.ListImagesResponse)
        self.content_info = _unary(channel, content + "Info", content_pb2.InfoResponse)
        self.content_list = _stream(channel, content + "List", content_pb2.ListContentResponse)
        self.content_statuses = _unary(
            channel, content + "ListStatuses", content_pb2.ListStatusesResponse
        )
        self.content_abort = _unary(channel, content + "Abort", Empty)
        self.plugins = _unary(
            channel,
            "/containerd.services.introspection.v1.Introspection/Plugins",
            introspection_pb2.PluginsResponse,
        )
        self.version = _unary(
            channel, "/containerd.services.version.v1.Version/Version", version_pb2.VersionResponse
        )
        self.subscribe = _stream(
            channel, "/containerd.services.events.v1.Events/Subscribe", events_pb2.Envelope
        )


EMPTY = Empty()

_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code: Callable[[], grpc.StatusCode] | None = getattr(error, "code", None)
    return code() if code is not None else None


def translate(error: grpc.RpcError, what: str) -> ContainerdError:
    """The ContainerdError for a failed call; `what` names the call for the message."""
    code = status_code(error)
    details = getattr(error, "details", lambda: None)() or ""
    name = code.name if code is not None else None
    message = f"{what}: {name or 'error'}: {details}".rstrip(": ")
    if code in _TRANSIENT:
        return ContainerdUnavailable(message, name)
    return ContainerdError(message, name)
