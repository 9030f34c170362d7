"""A CRI runtime.v1 ImageService client: what kubelet calls, on a node's containerd socket.

containerd serves CRI on its main gRPC socket (when its CRI plugin is on, see
`ContainerdNode(cri=True)`), so the client dials `ContainerdNode.address`.
Only the four image calls kubelet makes for a pull are here: PullImage,
ImageStatus, ListImages, RemoveImage (messages in `cri_proto/api.proto`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from bench.kit.cri_proto import api_pb2, api_pb2_grpc
from bench.kit.procs import KitError


@dataclass(frozen=True)
class CriImage:
    """An image as CRI reports it: `id` is `sha256:<config hex>`."""

    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class CriPull:
    ref: str
    image_ref: str
    duration: float


def _image(pb: api_pb2.Image) -> CriImage:
    return CriImage(pb.id, tuple(pb.repo_tags), tuple(pb.repo_digests), pb.size)


class CriImageClient:
    """Blocking client; `with CriImageClient(node.address) as cri: cri.pull(ref)`."""

    def __init__(self, address: Path | str, *, timeout: float = 120.0) -> None:
        self.address = str(address)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{self.address}")
        self._stub = api_pb2_grpc.ImageServiceStub(self._channel)

    def __enter__(self) -> CriImageClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the CRI image service answers (the plugin starts after the socket)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.list_images()
                return
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    raise KitError(f"CRI image service on {self.address}: {exc}") from exc
            time.sleep(0.1)

    def pull(self, ref: str, *, timeout: float | None = None) -> CriPull:
        """PullImage as kubelet sends it; returns the image_ref (the image ID)."""
        request = api_pb2.PullImageRequest(
            image=api_pb2.ImageSpec(image=ref, user_specified_image=ref)
        )
        started = time.perf_counter()
        reply = self._stub.PullImage(request, timeout=timeout or self.timeout)
        return CriPull(ref, reply.image_ref, time.perf_counter() - started)

    def status(self, ref: str) -> CriImage | None:
        """ImageStatus: None when the image is not on the node (CRI answers an empty image)."""
        reply = self._stub.ImageStatus(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)), timeout=self.timeout
        )
        return _image(reply.image) if reply.HasField("image") else None

    def list_images(self) -> list[CriImage]:
        reply = self._stub.ListImages(api_pb2.ListImagesRequest(), timeout=self.timeout)
        return [_image(pb) for pb in reply.images]

    def remove(self, ref: str) -> None:
        """RemoveImage by name, digest or ID (removing an absent image is not an error)."""
        self._stub.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=self.timeout
        )
