"""Manifest media types, detected from the content itself (pure)."""

from __future__ import annotations

import json

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = frozenset({OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
BLOB_CONTENT_TYPE = "application/octet-stream"
# The spec lets registries refuse larger manifests; so do we, so one read bounds memory.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


def detect_manifest_type(content: bytes) -> str | None:
    """The manifest media type of `content`, or None when it is not a manifest."""
    document = parse_manifest(content)
    if document is None:
        return None
    declared = document.get("mediaType")
    if isinstance(declared, str):
        return declared if declared in MANIFEST_TYPES else None
    if document.get("schemaVersion") != 2:
        return None
    if isinstance(document.get("manifests"), list):
        return OCI_INDEX
    if isinstance(document.get("config"), dict) and isinstance(document.get("layers"), list):
        return OCI_MANIFEST
    return None


def _digests_in(document: dict[str, object], field: str) -> list[str]:
    value = document.get(field)
    entries = value if isinstance(value, list) else [value]
    return [
        e["digest"] for e in entries if isinstance(e, dict) and isinstance(e.get("digest"), str)
    ]


def child_manifests(document: dict[str, object]) -> list[str]:
    """What an index points at: manifests (or nested indexes), documents to read in turn."""
    return _digests_in(document, "manifests")


def child_blobs(document: dict[str, object]) -> list[str]:
    """What a manifest points at: its config and layers, blobs that are never walked."""
    return _digests_in(document, "config") + _digests_in(document, "layers")


def referenced_digests(document: dict[str, object]) -> list[str]:
    """Every digest a manifest or index points at (pure)."""
    return child_manifests(document) + child_blobs(document)


def parse_manifest(content: bytes) -> dict[str, object] | None:
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None
