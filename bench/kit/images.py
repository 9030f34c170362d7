"""Deterministic test images as OCI image layouts, and pushing them with skopeo.

By default layers are uncompressed tars (`application/vnd.oci.image.layer.v1.tar`)
of seeded random bytes: incompressible, identical for the same seed, and their
digest equals their diff_id. `compression` gives gzip or zstd layers (per layer,
as real images mix them) and `content="tree"` real filesystem content
(directories, symlinks, hardlinks, whiteouts: see `bench/kit/layers.py`);
`multi_arch` an index with one manifest per platform, each with its own layers.
Layers are streamed to disk and hashed while written, so size is bounded by disk,
not memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.kit import layers
from bench.kit.distribution import get_manifest, split_ref
from bench.kit.layers import COMPRESSIONS, HashingWriter, tar_info, write_layer
from bench.kit.layers import LAYER_MEDIA_TYPE as LAYER_MEDIA_TYPE
from bench.kit.layers import split as _split
from bench.kit.procs import KitError, run

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP_MEDIA_TYPE = COMPRESSIONS["gzip"]
LAYER_ZSTD_MEDIA_TYPE = COMPRESSIONS["zstd"]
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
IN_TOTO_MEDIA_TYPE = "application/vnd.in-toto+json"

# Fixed timestamps keep generated blobs byte-identical across runs.
CREATED = "2024-01-01T00:00:00Z"

# The tar entry every OCI layout of the project writes (container/image.py too).
tarinfo = tar_info


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str
    # A layer's uncompressed digest when it differs from `digest` (a compressed layer).
    uncompressed: str | None = None

    @property
    def diff_id(self) -> str:
        return self.uncompressed or self.digest

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class PlatformImage:
    platform: str
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    def blobs(self) -> tuple[Blob, ...]:
        return (self.manifest, self.config, *self.layers)

    @property
    def chain_id(self) -> str:
        """The unpacked image's snapshot key: the OCI chain ID of its diff_ids."""
        chain = self.layers[0].diff_id
        for layer in self.layers[1:]:
            chain = "sha256:" + hashlib.sha256(f"{chain} {layer.diff_id}".encode()).hexdigest()
        return chain


@dataclass(frozen=True)
class GeneratedImage:
    layout_dir: Path
    name: str
    tag: str
    top: Blob  # what the tag points to: the index if multi-arch, else the manifest
    images: tuple[PlatformImage, ...]
    # Blobs the index names besides the platforms' images (attestation manifests).
    extras: tuple[Blob, ...] = ()

    @property
    def digest(self) -> str:
        return self.top.digest

    @property
    def multi_arch(self) -> bool:
        return self.top.media_type == INDEX_MEDIA_TYPE

    @property
    def layers(self) -> tuple[Blob, ...]:
        return tuple(layer for image in self.images for layer in image.layers)

    def blobs(self) -> list[Blob]:
        """Every blob of the image, top first, without duplicates."""
        seen: dict[str, Blob] = {self.top.digest: self.top}
        for image in self.images:
            for blob in image.blobs():
                seen.setdefault(blob.digest, blob)
        for blob in self.extras:
            seen.setdefault(blob.digest, blob)
        return list(seen.values())

    @property
    def total_size(self) -> int:
        return sum(b.size for b in self.blobs())

    def platform(self, platform: str) -> PlatformImage:
        for image in self.images:
            if image.platform == platform:
                return image
        raise KeyError(platform)

    def blob_path(self, digest: str) -> Path:
        return self.layout_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def ref(self, registry_host: str) -> str:
        return f"{registry_host}/{self.name}:{self.tag}"


def blob_dir(layout_dir: Path) -> Path:
    """`blobs/sha256` of an OCI layout, created if missing."""
    d = layout_dir / "blobs" / "sha256"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_blob(layout_dir: Path, data: bytes, media_type: str) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    path = blob_dir(layout_dir) / digest
    if not path.exists():
        tmp = path.with_name(f".tmp-{digest}")
        tmp.write_bytes(data)
        tmp.rename(path)
    return Blob(f"sha256:{digest}", len(data), media_type)


def write_json_blob(layout_dir: Path, obj: Any, media_type: str) -> Blob:
    """`obj` as compact JSON with sorted keys: the same object gives the same digest."""
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    return write_blob(layout_dir, data, media_type)


def streamed_blob(layout_dir: Path) -> contextlib.AbstractContextManager[HashingWriter]:
    """A blob streamed into the layout, stored under its digest (layers.streamed_blob)."""
    return layers.streamed_blob(blob_dir(layout_dir))


def _write_layer(
    layout_dir: Path,
    seed: str,
    index: int,
    size: int,
    files: int,
    compression: str = "none",
    content: str = "random",
) -> Blob:
    """A tar of `files` files totalling `size` bytes (see bench/kit/layers.py)."""
    written = write_layer(
        blob_dir(layout_dir), seed, index, size, files, compression=compression, content=content
    )
    uncompressed = written.diff_id if written.diff_id != written.digest else None
    return Blob(written.digest, written.size, written.media_type, uncompressed)


def _platform_fields(platform: str) -> dict[str, str]:
    os_name, arch, *variant = platform.split("/")
    fields = {"os": os_name, "architecture": arch}
    if variant:
        fields["variant"] = variant[0]
    return fields


def _write_platform_image(
    layout_dir: Path,
    *,
    name: str,
    seed: int,
    platform: str,
    layer_sizes: Sequence[int],
    files_per_layer: int,
    compressions: Sequence[str] = ("none",),
    content: str = "random",
) -> PlatformImage:
    layers = tuple(
        _write_layer(
            layout_dir,
            f"{seed}/{platform}/{i}",
            i,
            size,
            files_per_layer,
            compressions[i % len(compressions)],
            content,
        )
        for i, size in enumerate(layer_sizes)
    )
    config = {
        "created": CREATED,
        **_platform_fields(platform),
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {"bench.kit.name": name, "bench.kit.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": CREATED, "created_by": f"bench.kit layer {i}"} for i in range(len(layers))
        ],
    }
    config_blob = write_json_blob(layout_dir, config, CONFIG_MEDIA_TYPE)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config_blob.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    manifest_blob = write_json_blob(layout_dir, manifest, MANIFEST_MEDIA_TYPE)
    return PlatformImage(platform, manifest_blob, config_blob, layers)


def tag_in_layout(layout_dir: Path, top: Blob, tag: str) -> None:
    """Point `tag` at `top` in the layout's index.json, keeping other tags."""
    (layout_dir / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = layout_dir / "index.json"
    manifests: list[dict[str, Any]] = []
    if index_path.exists():
        manifests = [
            m
            for m in json.loads(index_path.read_text()).get("manifests", [])
            if m.get("annotations", {}).get(REF_NAME_ANNOTATION) != tag
        ]
    manifests.append(top.descriptor(annotations={REF_NAME_ANNOTATION: tag}))
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests}
    tmp = index_path.with_name(".index.json.tmp")
    tmp.write_text(json.dumps(index, indent=2))
    tmp.replace(index_path)


def generate_image(
    out_dir: Path,
    *,
    name: str,
    tag: str,
    seed: int,
    total_size: int,
    layers: int,
    multi_arch: bool = False,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
    files_per_layer: int = 1,
    layer_sizes: Sequence[int] | None = None,
    compression: str | Sequence[str] = "none",
    content: str = "random",
    attestations: bool = False,
) -> GeneratedImage:
    """Write an image into the OCI layout `out_dir` under `tag`.

    `total_size` is the file payload per platform, split evenly over `layers`
    (or given exactly by `layer_sizes`); blobs are slightly larger (tar headers)
    or smaller (compressed text). A single-arch image uses `platforms[0]`; a
    multi-arch one gets an index with one manifest per platform, each with its
    own layers, and with `attestations` one more per platform, as BuildKit
    pushes them (platform `unknown/unknown`, an in-toto layer; in `extras`).
    `compression` is `none`, `gzip` or `zstd`, or a sequence used layer by layer
    in turn; `content` is `random` or `tree` (bench/kit/layers.py). The same
    arguments give the same digests.
    """
    out_dir = Path(out_dir)
    sizes = list(layer_sizes) if layer_sizes is not None else _split(total_size, layers)
    if not sizes or files_per_layer < 1:
        raise ValueError("an image needs at least one layer and one file per layer")
    compressions = [compression] if isinstance(compression, str) else list(compression)
    if not compressions:
        raise ValueError("compression: give at least one")
    chosen = list(platforms) if multi_arch else [platforms[0]]
    images = tuple(
        _write_platform_image(
            out_dir,
            name=name,
            seed=seed,
            platform=p,
            layer_sizes=sizes,
            files_per_layer=files_per_layer,
            compressions=compressions,
            content=content,
        )
        for p in chosen
    )
    extras: tuple[Blob, ...] = ()
    if multi_arch:
        entries = [
            image.manifest.descriptor(platform=_platform_fields(image.platform)) for image in images
        ]
        if attestations:
            for image in images:
                blobs = _write_attestation(out_dir, image)
                extras += blobs
                entries.append(
                    blobs[0].descriptor(
                        platform={"architecture": "unknown", "os": "unknown"},
                        annotations={
                            "vnd.docker.reference.digest": image.manifest.digest,
                            "vnd.docker.reference.type": "attestation-manifest",
                        },
                    )
                )
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries}
        top = write_json_blob(out_dir, index, INDEX_MEDIA_TYPE)
    else:
        top = images[0].manifest
    tag_in_layout(out_dir, top, tag)
    return GeneratedImage(out_dir, name, tag, top, images, extras)


def _write_attestation(layout_dir: Path, image: PlatformImage) -> tuple[Blob, Blob, Blob]:
    """An attestation manifest for `image` as BuildKit writes one: (manifest, config, layer)."""
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "bench.kit", "digest": {"sha256": image.manifest.hex}}],
        "predicate": {"builder": {"id": "bench.kit"}},
    }
    layer = write_json_blob(layout_dir, statement, IN_TOTO_MEDIA_TYPE)
    config = write_json_blob(
        layout_dir,
        {
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        },
        CONFIG_MEDIA_TYPE,
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.descriptor(),
        "layers": [
            layer.descriptor(annotations={"in-toto.io/predicate-type": statement["predicateType"]})
        ],
    }
    return write_json_blob(layout_dir, manifest, MANIFEST_MEDIA_TYPE), config, layer


def layout_digest(layout_dir: Path, tag: str) -> str:
    """The digest `tag` points to in an OCI layout's index.json."""
    index = json.loads((Path(layout_dir) / "index.json").read_text())
    for m in index.get("manifests", []):
        if m.get("annotations", {}).get(REF_NAME_ANNOTATION) == tag:
            return str(m["digest"])
    raise KeyError(f"tag {tag!r} not in {layout_dir}/index.json")


def push_image(
    layout_dir: Path,
    ref_tag: str,
    dest: str,
    *,
    tmp_dir: Path | None = None,
    timeout: float = 600.0,
) -> str:
    """Copy `oci:<layout_dir>:<ref_tag>` to `docker://<dest>` over plain HTTP, digests unchanged.

    Reads the manifest back from the registry and fails unless its digest is
    the one in the layout. Returns that digest.
    """
    expected = layout_digest(layout_dir, ref_tag)
    argv = ["skopeo", "--insecure-policy"]
    if tmp_dir is not None:
        argv += ["--tmpdir", str(tmp_dir)]
    argv += [
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci:{layout_dir}:{ref_tag}",
        f"docker://{dest}",
    ]
    run(argv, timeout=timeout)
    host, repo, reference = split_ref(dest)
    pushed = get_manifest(host, repo, reference).digest
    if pushed != expected:
        raise KitError(f"push of {layout_dir}:{ref_tag} changed its digest: {expected} -> {pushed}")
    return pushed
