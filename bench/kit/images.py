"""Deterministic test images as OCI image layouts, and pushing them with skopeo.

Layers are uncompressed tars (`application/vnd.oci.image.layer.v1.tar`) of
seeded random bytes: incompressible, identical for the same seed, and their
digest equals their diff_id. Layers are streamed to disk and hashed while
written, so size is bounded by disk, not memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from bench.kit.distribution import get_manifest, split_ref
from bench.kit.procs import KitError, run

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

CHUNK = 1 << 20
# Fixed timestamps keep generated blobs byte-identical across runs.
CREATED = "2024-01-01T00:00:00Z"
MTIME = 1704067200


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str

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


@dataclass(frozen=True)
class GeneratedImage:
    layout_dir: Path
    name: str
    tag: str
    top: Blob  # what the tag points to: the index if multi-arch, else the manifest
    images: tuple[PlatformImage, ...]

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


class HashingWriter:
    """A write-only file wrapper that hashes and counts what goes through it.

    Enough for what only writes and tells (tarfile's "w" mode, GzipFile), though
    their type hints ask for a whole file.
    """

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self._f.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


class _RandomReader:
    def __init__(self, rng: random.Random, size: int) -> None:
        self._rng = rng
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return self._rng.randbytes(n)


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


@contextlib.contextmanager
def streamed_blob(layout_dir: Path) -> Iterator[HashingWriter]:
    """A blob written through a HashingWriter, stored under its digest on success.

    The writer is hashed as it goes, so a blob of any size never sits in memory;
    it is renamed to `blobs/sha256/<digest>` when the block ends without an error,
    removed otherwise.
    """
    directory = blob_dir(layout_dir)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-blob-", dir=directory)
    os.fchmod(fd, 0o644)  # as write_blob's, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as f:
            writer = HashingWriter(f)
            yield writer
        os.replace(tmp_name, directory / writer.sha.hexdigest())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _write_layer(layout_dir: Path, seed: str, index: int, size: int, files: int) -> Blob:
    """A tar with a directory and `files` random files totalling `size` bytes."""
    rng = random.Random(seed)
    with (
        streamed_blob(layout_dir) as writer,
        tarfile.TarFile(
            fileobj=cast(IO[bytes], writer), mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK
        ) as tar,
    ):
        top = f"layer-{index}"
        tar.addfile(tarinfo(top, tarfile.DIRTYPE, 0, 0o755))
        for i, part in enumerate(_split(size, files)):
            info = tarinfo(f"{top}/data-{i}.bin", tarfile.REGTYPE, part, 0o644)
            tar.addfile(info, _RandomReader(rng, part))
    return Blob(writer.digest, writer.size, LAYER_MEDIA_TYPE)


def tarinfo(name: str, kind: bytes, size: int, mode: int) -> tarfile.TarInfo:
    """A tar entry owned by root with the fixed mtime: the same tree gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


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
) -> PlatformImage:
    layers = tuple(
        _write_layer(layout_dir, f"{seed}/{platform}/{i}", i, size, files_per_layer)
        for i, size in enumerate(layer_sizes)
    )
    config = {
        "created": CREATED,
        **_platform_fields(platform),
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {"bench.kit.name": name, "bench.kit.seed": str(seed)},
        },
        # Uncompressed layers: the diff_id is the layer digest itself.
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
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
) -> GeneratedImage:
    """Write an image into the OCI layout `out_dir` under `tag`.

    `total_size` is the file payload per platform, split evenly over `layers`
    (or given exactly by `layer_sizes`); blobs are slightly larger (tar headers).
    A single-arch image uses `platforms[0]`; a multi-arch one gets an index with
    one manifest per platform, each with its own layers. The same arguments give
    the same digests.
    """
    out_dir = Path(out_dir)
    sizes = list(layer_sizes) if layer_sizes is not None else _split(total_size, layers)
    if not sizes or files_per_layer < 1:
        raise ValueError("an image needs at least one layer and one file per layer")
    chosen = list(platforms) if multi_arch else [platforms[0]]
    images = tuple(
        _write_platform_image(
            out_dir,
            name=name,
            seed=seed,
            platform=p,
            layer_sizes=sizes,
            files_per_layer=files_per_layer,
        )
        for p in chosen
    )
    if multi_arch:
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [
                image.manifest.descriptor(platform=_platform_fields(image.platform))
                for image in images
            ],
        }
        top = write_json_blob(out_dir, index, INDEX_MEDIA_TYPE)
    else:
        top = images[0].manifest
    tag_in_layout(out_dir, top, tag)
    return GeneratedImage(out_dir, name, tag, top, images)


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
