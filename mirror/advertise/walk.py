"""An image's DHT keys: its tag key and every digest of it present on this node.

The walk reads manifests straight from the content store (index -> manifests ->
config and layers), so it sees exactly what this node can serve: a platform
that was never pulled is not advertised.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from mirror.containerd.paths import blob_path
from mirror.oci.digest import Digest, InvalidDigest, parse_digest
from mirror.oci.filters import ReferenceFilter
from mirror.oci.mediatypes import (
    MAX_MANIFEST_SIZE,
    child_blobs,
    child_manifests,
    parse_manifest,
)
from mirror.oci.reference import parse_image_name

# CRI records every image a second time under its ID, `sha256:<config hex>`: a
# name that is not a reference (it would parse as docker.io/sha256 with that tag).
_IMAGE_ID = re.compile(r"sha(256|384|512):[0-9a-f]{32,128}")


def is_image_id(name: str) -> bool:
    """True for CRI's image-ID records (`sha256:<hex>`), which are not image references."""
    return _IMAGE_ID.fullmatch(name) is not None


def missing_digests(content_root: Path, digests: Iterable[str]) -> list[str]:
    """Those of `digests` whose blob is not (or no longer) in the content store: a stat each."""
    return [text for text in digests if _present(content_root, text) is None]


def _read_manifest(content_root: Path, digest: Digest) -> dict[str, object] | None:
    path = blob_path(content_root, digest)
    try:
        if os.stat(path).st_size > MAX_MANIFEST_SIZE:
            return None
        return parse_manifest(path.read_bytes())
    except OSError:
        return None


def _present(content_root: Path, text: str) -> Digest | None:
    try:
        digest = parse_digest(text)
    except InvalidDigest:
        return None
    return digest if blob_path(content_root, digest).is_file() else None


def present_digests(content_root: Path, top: str, *, limit: int = 100_000) -> list[str]:
    """Digests reachable from `top` whose blobs this node holds, `top` first.

    Only indexes and manifests are read; a config or layer is a leaf whose
    presence is all that matters, so a resync never reads layer content.
    """
    result: list[str] = []
    seen: set[str] = set()
    documents = [top]
    while documents and len(result) < limit:
        text = documents.pop(0)
        if text in seen:
            continue
        seen.add(text)
        digest = _present(content_root, text)
        if digest is None:
            continue
        result.append(text)
        document = _read_manifest(content_root, digest)
        if document is None:
            continue
        documents += child_manifests(document)
        for leaf in child_blobs(document):
            if leaf not in seen:
                seen.add(leaf)
                if _present(content_root, leaf) is not None:
                    result.append(leaf)
    return result


def image_keys(
    content_root: Path, name: str, target_digest: str, reference_filter: ReferenceFilter
) -> frozenset[str]:
    """The keys to provide for one containerd image record; empty when filtered out.

    CRI's image-ID records are skipped: the same digests are provided through
    the image's real names.
    """
    if is_image_id(name):
        return frozenset()
    try:
        image = parse_image_name(name)
    except ValueError:
        return frozenset()
    reference = str(image)
    if not reference_filter.allows(reference, image.registry):
        return frozenset()
    keys = set(present_digests(content_root, target_digest))
    tag_key = image.tag_key()
    if tag_key is not None and keys:
        keys.add(tag_key)
    return frozenset(keys)
