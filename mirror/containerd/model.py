"""What the client hands out: frozen values, decoupled from the protobuf classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mirror.containerd.proto import content_pb2, images_pb2, types_pb2

EventKind = Literal["create", "update", "delete"]


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Image:
    name: str
    target: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContentInfo:
    digest: str
    size: int
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestStatus:
    """A download in progress in the content store (`ref`: the writer's name)."""

    ref: str
    offset: int
    total: int
    expected: str


@dataclass(frozen=True)
class ImageEvent:
    """An image record was created, updated (re-pointed or relabelled) or deleted."""

    kind: EventKind
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContentEvent:
    """A blob was committed ("create", containerd >= 2.0 only) or deleted.

    `size` is 0 for "delete", which does not carry one.
    """

    kind: EventKind
    namespace: str
    digest: str
    size: int = 0


def descriptor_from_pb(pb: types_pb2.Descriptor) -> Descriptor:
    return Descriptor(
        media_type=pb.media_type,
        digest=pb.digest,
        size=pb.size,
        annotations=dict(pb.annotations),
    )


def image_from_pb(pb: images_pb2.Image) -> Image:
    return Image(name=pb.name, target=descriptor_from_pb(pb.target), labels=dict(pb.labels))


def content_info_from_pb(pb: content_pb2.Info) -> ContentInfo:
    return ContentInfo(digest=pb.digest, size=pb.size, labels=dict(pb.labels))


def ingest_status_from_pb(pb: content_pb2.Status) -> IngestStatus:
    return IngestStatus(ref=pb.ref, offset=pb.offset, total=pb.total, expected=pb.expected)
