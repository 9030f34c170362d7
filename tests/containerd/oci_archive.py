"""A tiny OCI image archive for `ctr images import` (one random layer)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class OciArchive:
    path: Path
    name: str
    manifest: Blob
    config: Blob
    layer: Blob


def _layer(payload_size: int) -> tuple[bytes, bytes]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("payload.bin")
        info.size = payload_size
        tar.addfile(info, io.BytesIO(os.urandom(payload_size)))
    diff = raw.getvalue()
    return diff, gzip.compress(diff, mtime=0)


def build_oci_archive(path: Path, name: str, payload_size: int = 4096) -> OciArchive:
    """Write an OCI archive whose single manifest is named `name` (a full image ref)."""
    diff, compressed = _layer(payload_size)
    layer = Blob(LAYER, compressed)
    config = Blob(
        CONFIG,
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {
                    "type": "layers",
                    "diff_ids": ["sha256:" + hashlib.sha256(diff).hexdigest()],
                },
                "config": {},
            }
        ).encode(),
    )
    manifest = Blob(
        MANIFEST,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        ).encode(),
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                **manifest.descriptor(),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
    }
    for blob in (layer, config, manifest):
        files["blobs/sha256/" + blob.digest.removeprefix("sha256:")] = blob.data
    with tarfile.open(path, "w") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return OciArchive(path, name, manifest, config, layer)
