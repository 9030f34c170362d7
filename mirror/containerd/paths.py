"""Where containerd's content store keeps a committed blob (pure)."""

from __future__ import annotations

from pathlib import Path

from mirror.oci.digest import Digest

DEFAULT_CONTENT_PATH = Path("/var/lib/containerd/io.containerd.content.v1.content")


def blob_path(content_root: Path, digest: Digest) -> Path:
    # `digest` is validated (known algorithm, fixed-length lowercase hex), so the
    # result can only ever be a file directly inside blobs/<algorithm>/.
    return content_root / "blobs" / digest.algorithm / digest.hex
