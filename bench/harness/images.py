"""The benchmark images: generated once into an OCI layout cache, pushed wherever needed.

Each image is one OCI layout under `<cache>/<tag>-s<salt>/`: a tiny `pause`
base layer plus the case's random layers (seeded, so the same parameters give
the same digests, and v1 shares nothing with v2). A layout is only reused once
its `complete` marker names the image's digest.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.cases import REPOSITORY, Case
from bench.harness.pause import ENTRYPOINT, pause_layer, sha256
from bench.kit.images import (
    INDEX_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    REF_NAME_ANNOTATION,
    generate_image,
    push_image,
)

MARKER = "complete"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trio-mirror" / "bench-images"


@dataclass(frozen=True)
class BenchImage:
    case: Case
    version: str
    layout_dir: Path
    digest: str  # the manifest's
    size: int  # every blob: manifest, config, layers

    @property
    def tag(self) -> str:
        return self.case.tag(self.version)

    def ref(self, registry_host: str, repository: str = REPOSITORY) -> str:
        return f"{registry_host}/{repository}:{self.tag}"


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _write_blob(layout: Path, data: bytes) -> str:
    digest = sha256(data)
    path = _blob(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _rebase_on_pause(layout: Path, manifest_digest: str, tag: str, marker: str) -> tuple[str, int]:
    """Put the pause layer under the generated layers; returns (manifest digest, total size)."""
    manifest = json.loads(_blob(layout, manifest_digest).read_bytes())
    config_digest = manifest["config"]["digest"]
    config = json.loads(_blob(layout, config_digest).read_bytes())
    base = pause_layer(marker)
    base_digest = _write_blob(layout, base)
    config["config"]["Entrypoint"] = [ENTRYPOINT]
    config["rootfs"]["diff_ids"].insert(0, base_digest)
    config["history"].insert(0, {"created": config["created"], "created_by": "pause"})
    config_data = _json(config)
    new_config = _write_blob(layout, config_data)
    manifest["config"] = {**manifest["config"], "digest": new_config, "size": len(config_data)}
    manifest["layers"].insert(
        0, {"mediaType": LAYER_MEDIA_TYPE, "digest": base_digest, "size": len(base)}
    )
    manifest_data = _json(manifest)
    new_manifest = _write_blob(layout, manifest_data)
    for stale in (manifest_digest, config_digest):
        _blob(layout, stale).unlink(missing_ok=True)
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": manifest["mediaType"],
                "digest": new_manifest,
                "size": len(manifest_data),
                "annotations": {REF_NAME_ANNOTATION: tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index, indent=2))
    total = len(manifest_data) + len(config_data) + sum(x["size"] for x in manifest["layers"])
    return new_manifest, total


def build_image(case: Case, version: str, cache_dir: Path, salt: int = 0) -> BenchImage:
    """The image from the cache, generated first if it is not there (or only half there)."""
    tag = case.tag(version)
    layout = Path(cache_dir) / f"{tag}-s{salt}"
    marker = layout / MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        return BenchImage(case, version, layout, recorded["digest"], recorded["size"])
    shutil.rmtree(layout, ignore_errors=True)
    generated = generate_image(
        layout,
        name=REPOSITORY,
        tag=tag,
        seed=case.seed(version, salt),
        total_size=case.size,
        layers=case.layers,
    )
    digest, size = _rebase_on_pause(layout, generated.digest, tag, f"{tag} salt={salt}")
    marker.write_text(json.dumps({"digest": digest, "size": size}))
    return BenchImage(case, version, layout, digest, size)


def build_pair(case: Case, cache_dir: Path, salt: int = 0) -> tuple[BenchImage, BenchImage]:
    v1, v2 = (build_image(case, version, cache_dir, salt) for version in ("v1", "v2"))
    return v1, v2


def push(image: BenchImage, registry_host: str, repository: str = REPOSITORY) -> str:
    """Push to `registry_host` (plain HTTP); returns the pushed manifest digest."""
    return push_image(image.layout_dir, image.tag, image.ref(registry_host, repository))
