from __future__ import annotations

import pytest
from google.protobuf.message import Message

from mirror.containerd.errors import ContainerdError
from mirror.containerd.events import decode_envelope
from mirror.containerd.model import ContentEvent, ImageEvent
from mirror.containerd.proto import content_events_pb2, events_pb2, image_events_pb2

DIGEST = "sha256:" + "ab" * 32


def envelope(topic: str, event: Message, type_url: str | None = None) -> events_pb2.Envelope:
    env = events_pb2.Envelope(namespace="k8s.io", topic=topic)
    env.event.type_url = type_url or event.DESCRIPTOR.full_name
    env.event.value = event.SerializeToString()
    return env


def test_image_events() -> None:
    labels = {"io.cri-containerd.image": "managed"}
    create = image_events_pb2.ImageCreate(name="docker.io/library/a:1", labels=labels)
    update = image_events_pb2.ImageUpdate(name="docker.io/library/a:1")
    delete = image_events_pb2.ImageDelete(name="docker.io/library/a:1")
    assert decode_envelope(envelope("/images/create", create)) == ImageEvent(
        "create", "k8s.io", "docker.io/library/a:1", labels
    )
    assert decode_envelope(envelope("/images/update", update)) == ImageEvent(
        "update", "k8s.io", "docker.io/library/a:1", {}
    )
    assert decode_envelope(envelope("/images/delete", delete)) == ImageEvent(
        "delete", "k8s.io", "docker.io/library/a:1", {}
    )


def test_type_urls_are_containerds_names() -> None:
    # The names containerd 1.6 puts in the Any (checked against a live daemon).
    assert image_events_pb2.ImageCreate.DESCRIPTOR.full_name == (
        "containerd.services.images.v1.ImageCreate"
    )
    assert (
        content_events_pb2.ContentDelete.DESCRIPTOR.full_name == "containerd.events.ContentDelete"
    )


def test_content_events() -> None:
    create = content_events_pb2.ContentCreate(digest=DIGEST, size=1234)
    delete = content_events_pb2.ContentDelete(digest=DIGEST)
    assert decode_envelope(envelope("/content/create", create)) == ContentEvent(
        "create", "k8s.io", DIGEST, 1234
    )
    assert decode_envelope(envelope("/content/delete", delete)) == ContentEvent(
        "delete", "k8s.io", DIGEST, 0
    )


def test_qualified_type_url() -> None:
    delete = content_events_pb2.ContentDelete(digest=DIGEST)
    env = envelope("/content/delete", delete, "types.containerd.io/containerd.events.ContentDelete")
    assert decode_envelope(env) == ContentEvent("delete", "k8s.io", DIGEST)


def test_unknown_event_types_are_skipped() -> None:
    other = image_events_pb2.ImageDelete(name="x")
    assert decode_envelope(envelope("/tasks/exit", other, "containerd.events.TaskExit")) is None
    assert decode_envelope(events_pb2.Envelope(topic="/snapshot/prepare")) is None


def test_undecodable_event_is_an_error() -> None:
    env = events_pb2.Envelope(namespace="k8s.io", topic="/images/create")
    env.event.type_url = "containerd.services.images.v1.ImageCreate"
    env.event.value = b"\xff\xff\xff"
    with pytest.raises(ContainerdError):
        decode_envelope(env)
