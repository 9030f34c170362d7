"""A local blob altered on disk after containerd committed it is never sent to a
peer: proven once per file identity before its first answer (or, past the inline
limit, while it is sent, and refused from then on). Real files, the real handler."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import trio

from mirror.server.localstore import LocalStore
from mirror.server.proofs import BlobProofs
from mirror.server.registry import MIRRORED_HEADER, RegistryHandler
from mirror.server.request import Request
from mirror.server.response import Response

BLOB = os.urandom(300_000)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {}, "layers": []}'  # noqa: E501
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


class NoTags:
    async def resolve(self, image_name: str) -> None:
        return None


def _store(root: Path) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / DIGEST.removeprefix("sha256:")).write_bytes(BLOB)
    (blobs / MANIFEST_DIGEST.removeprefix("sha256:")).write_bytes(MANIFEST)
    return root


def _alter(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


async def _get(
    handler: RegistryHandler, digest: str, *, peer: bool, method: str = "GET"
) -> Response:
    kind = "manifests" if digest == MANIFEST_DIGEST else "blobs"
    headers = {MIRRORED_HEADER: "true"} if peer else {}
    request = Request(method, f"/v2/team/app/{kind}/{digest}?ns=example.com", headers, True, False)
    response = await handler(request)
    response.release()
    return response


def _blob_file(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


async def test_an_altered_blob_is_refused_to_peers_once_proven_wrong(tmp_path: Path) -> None:
    root = _store(tmp_path)
    reported: list[str] = []
    proofs = BlobProofs(on_wrong=reported.append)
    handler = RegistryHandler(LocalStore(root, NoTags()), proofs=proofs)
    assert (await _get(handler, DIGEST, peer=True)).status == 200  # proven right
    assert reported == []
    _alter(_blob_file(root, DIGEST))
    assert (await _get(handler, DIGEST, peer=True)).status == 404
    assert (await _get(handler, DIGEST, peer=True, method="HEAD")).status == 200  # no bytes
    assert proofs.wrong == 1
    assert reported == [DIGEST]  # the announcer releases a claim it kept on it
    (await _get(handler, DIGEST, peer=True))  # the verdict is kept: not hashed again
    assert proofs.wrong == 1
    _blob_file(root, DIGEST).write_bytes(BLOB)  # repaired: a new mtime, proven again
    assert (await _get(handler, DIGEST, peer=True)).status == 200


async def test_past_the_inline_limit_a_blob_is_sent_while_proven_then_refused(
    tmp_path: Path,
) -> None:
    root = _store(tmp_path)
    _alter(_blob_file(root, DIGEST))
    proofs = BlobProofs(inline_limit=1000)
    handler = RegistryHandler(LocalStore(root, NoTags()), proofs=proofs)
    assert (await _get(handler, DIGEST, peer=True)).status == 200
    for _ in range(500):
        if proofs.wrong:
            break
        await trio.sleep(0.01)
    assert (await _get(handler, DIGEST, peer=True)).status == 404


async def test_an_altered_manifest_is_not_served(tmp_path: Path) -> None:
    root = _store(tmp_path)
    path = _blob_file(root, MANIFEST_DIGEST)
    path.write_bytes(MANIFEST.replace(b'"layers"', b'"layerz"'))  # still a manifest
    handler = RegistryHandler(LocalStore(root, NoTags()))
    assert (await _get(handler, MANIFEST_DIGEST, peer=True)).status == 404
    assert (await _get(handler, MANIFEST_DIGEST, peer=False)).status == 404
