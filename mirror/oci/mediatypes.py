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


def referenced_digests(document: dict[str, object]) -> list[str]:
    """The digests a manifest or index points at: manifests, config, layers (pure)."""
    found: list[str] = []
    for field in ("manifests", "layers"):
        entries = document.get(field)
        if isinstance(entries, list):
            found += [
                e["digest"]
                for e in entries
                if isinstance(e, dict) and isinstance(e.get("digest"), str)
            ]
    config = document.get("config")
    if isinstance(config, dict) and isinstance(config.get("digest"), str):
        found.append(config["digest"])
    return found


def parse_manifest(content: bytes) -> dict[str, object] | None:
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None
