"""The advertise walk over a content-store directory laid out as containerd's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mirror.advertise.walk import image_keys, present_digests
from mirror.oci.filters import ReferenceFilter


def _put(root: Path, content: bytes) -> str:
    hex_digest = hashlib.sha256(content).hexdigest()
    path = root / "blobs" / "sha256" / hex_digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return f"sha256:{hex_digest}"


def _descriptor(digest: str) -> dict[str, object]:
    return {"mediaType": "x", "digest": digest, "size": 1}


def _manifest(config: str, layers: list[str]) -> bytes:
    document = {
        "schemaVersion": 2,
        "config": _descriptor(config),
        "layers": [_descriptor(layer) for layer in layers],
    }
    return json.dumps(document).encode()


def test_walk_reads_manifests_and_only_checks_leaves(tmp_path: Path) -> None:
    elsewhere = "sha256:" + "e" * 64
    (tmp_path / "blobs" / "sha256").mkdir(parents=True)
    (tmp_path / "blobs" / "sha256" / ("e" * 64)).write_bytes(b"present but unrelated")
    # A layer whose bytes look like a manifest naming another blob: layers are
    # leaves, so what they contain never adds keys.
    tricky_layer = _put(tmp_path, _manifest(elsewhere, [elsewhere]))
    config = _put(tmp_path, b'{"architecture":"amd64"}')
    amd64 = _put(tmp_path, _manifest(config, [tricky_layer]))
    arm64_missing = "sha256:" + "a" * 64
    index = _put(
        tmp_path,
        json.dumps(
            {"schemaVersion": 2, "manifests": [_descriptor(amd64), _descriptor(arm64_missing)]}
        ).encode(),
    )
    assert present_digests(tmp_path, index) == [index, amd64, config, tricky_layer]
    keys = image_keys(tmp_path, "registry.example/team/app:v1", index, ReferenceFilter())
    assert keys == {index, amd64, config, tricky_layer, "registry.example/team/app:v1"}
    filtered = ReferenceFilter.build([], [":v1$"])
    assert image_keys(tmp_path, "registry.example/team/app:v1", index, filtered) == frozenset()
    assert (
        image_keys(tmp_path, "registry.example/team/app:v1", arm64_missing, ReferenceFilter())
        == frozenset()
    )
