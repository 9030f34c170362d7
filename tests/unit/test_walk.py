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


def test_cri_image_id_records_give_no_keys(tmp_path: Path) -> None:
    from mirror.advertise.walk import is_image_id, missing_digests

    config = _put(tmp_path, b'{"architecture":"amd64"}')
    layer = _put(tmp_path, b"layer")
    manifest = _put(tmp_path, _manifest(config, [layer]))
    # CRI names the image a third time by its ID: not a reference (it would be
    # docker.io/sha256:<hex>), so nothing is advertised under it.
    assert is_image_id(config)
    assert image_keys(tmp_path, config, manifest, ReferenceFilter()) == frozenset()
    for name in ("registry.example/sha256:v1", "sha256", f"registry.example/app@{manifest}"):
        assert not is_image_id(name)
    by_digest = image_keys(
        tmp_path, f"registry.example/app@{manifest}", manifest, ReferenceFilter()
    )
    assert by_digest == {manifest, config, layer}
    gone = "sha256:" + "b" * 64
    assert missing_digests(tmp_path, [manifest, gone, "not-a-digest", layer]) == [
        gone,
        "not-a-digest",
    ]


def test_kubelet_normalised_names_are_their_own_tag_keys(tmp_path: Path) -> None:
    # kubelet hands CRI `docker.io/library/x:tag` for `x:tag`; containerd records that
    # name, and a pull asks the mirror for /v2/library/x/manifests/tag?ns=docker.io.
    config = _put(tmp_path, b'{"architecture":"arm64"}')
    manifest = _put(tmp_path, _manifest(config, []))
    for name in ("docker.io/library/x:1.2", "127.0.0.1:5000/library/x:1.2"):
        assert image_keys(tmp_path, name, manifest, ReferenceFilter()) == {
            manifest,
            config,
            name,
        }
