"""Decoding containerd event envelopes into ImageEvent / ContentEvent (pure, no I/O).

An Envelope carries its event as a `google.protobuf.Any`. containerd sets the
Any's type URL to the bare full message name ("containerd.events.ContentDelete");
a "host/"-qualified URL is accepted as well. Events of any other
kind (tasks, containers, snapshots, types added by a future containerd) decode
to None so that a subscriber skips them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from google.protobuf.message import DecodeError

from mirror.containerd.errors import ContainerdError
from mirror.containerd.model import ContentEvent, ImageEvent
from mirror.containerd.proto import content_events_pb2, events_pb2, image_events_pb2

Event: TypeAlias = ImageEvent | ContentEvent

_Decoder = Callable[[str, bytes], Event]


def _image_create(namespace: str, data: bytes) -> Event:
    pb = image_events_pb2.ImageCreate.FromString(data)
    return ImageEvent("create", namespace, pb.name, dict(pb.labels))


def _image_update(namespace: str, data: bytes) -> Event:
    pb = image_events_pb2.ImageUpdate.FromString(data)
    return ImageEvent("update", namespace, pb.name, dict(pb.labels))


def _image_delete(namespace: str, data: bytes) -> Event:
    pb = image_events_pb2.ImageDelete.FromString(data)
    return ImageEvent("delete", namespace, pb.name)


def _content_create(namespace: str, data: bytes) -> Event:
    pb = content_events_pb2.ContentCreate.FromString(data)
    return ContentEvent("create", namespace, pb.digest, pb.size)


def _content_delete(namespace: str, data: bytes) -> Event:
    pb = content_events_pb2.ContentDelete.FromString(data)
    return ContentEvent("delete", namespace, pb.digest)


# Image events live in the images service package, content events in
# containerd.events: that is how containerd declares them.
_DECODERS: dict[str, _Decoder] = {
    "containerd.services.images.v1.ImageCreate": _image_create,
    "containerd.services.images.v1.ImageUpdate": _image_update,
    "containerd.services.images.v1.ImageDelete": _image_delete,
    "containerd.events.ContentCreate": _content_create,
    "containerd.events.ContentDelete": _content_delete,
}


def decode_envelope(envelope: events_pb2.Envelope) -> Event | None:
    """The typed event in `envelope`, or None for an event kind we do not follow."""
    type_name = envelope.event.type_url.rsplit("/", 1)[-1]
    decode = _DECODERS.get(type_name)
    if decode is None:
        return None
    try:
        return decode(envelope.namespace, envelope.event.value)
    except DecodeError as exc:
        raise ContainerdError(f"undecodable {type_name} event on {envelope.topic}") from exc
