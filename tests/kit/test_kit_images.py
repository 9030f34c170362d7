"""Generated OCI layouts: valid, deterministic, plain or compressed, random or real files;
and hosts.toml rendering."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tomllib
import zlib
from pathlib import Path

import pytest
import zstandard

from bench.kit.hosts import write_hosts_toml
from bench.kit.images import (
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    LAYER_GZIP_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    LAYER_ZSTD_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Blob,
    GeneratedImage,
    generate_image,
    layout_digest,
)
from bench.kit.layers import tree_view

from .conftest import multi_image, small_image


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_blobs(image: GeneratedImage) -> None:
    for blob in image.blobs():
        path = image.blob_path(blob.digest)
        assert path.stat().st_size == blob.size
        assert sha256_file(path) == blob.digest


def test_single_arch_layout_is_valid(tmp_path: Path) -> None:
    image = small_image(tmp_path)
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert layout_digest(tmp_path, "v1") == image.digest
    assert image.top.media_type == MANIFEST_MEDIA_TYPE and not image.multi_arch
    check_blobs(image)

    (platform_image,) = image.images
    manifest = json.loads(image.blob_path(image.digest).read_bytes())
    assert manifest["config"] == platform_image.config.descriptor()
    assert [layer["mediaType"] for layer in manifest["layers"]] == [LAYER_MEDIA_TYPE] * 3
    config = json.loads(image.blob_path(platform_image.config.digest).read_bytes())
    assert platform_image.config.media_type == CONFIG_MEDIA_TYPE
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["rootfs"]["diff_ids"] == [layer.digest for layer in platform_image.layers]
    assert len(image.blobs()) == 5


def test_layers_are_tars_of_random_files(tmp_path: Path) -> None:
    image = small_image(tmp_path)
    payload = 0
    for i, layer in enumerate(image.layers):
        with tarfile.open(image.blob_path(layer.digest)) as tar:
            members = tar.getmembers()
            assert [m.name for m in members] == [
                f"layer-{i}",
                f"layer-{i}/data-0.bin",
                f"layer-{i}/data-1.bin",
            ]
            file = tar.extractfile(members[1])
            assert file is not None
            sample = file.read(1 << 16)
        assert len(zlib.compress(sample)) > 0.99 * len(sample)
        payload += sum(m.size for m in members)
    assert payload == 2 << 20


def test_same_seed_same_digests_other_seed_other_layers(tmp_path: Path) -> None:
    a = small_image(tmp_path / "a")
    b = small_image(tmp_path / "b")
    c = generate_image(
        tmp_path / "c", name="kit/small", tag="v1", seed=7, total_size=2 << 20, layers=3
    )
    assert a.blobs() == b.blobs()
    assert not {layer.digest for layer in a.layers} & {layer.digest for layer in c.layers}


def test_multi_arch_index(tmp_path: Path) -> None:
    image = multi_image(tmp_path)
    assert image.multi_arch and image.top.media_type == INDEX_MEDIA_TYPE
    check_blobs(image)
    index = json.loads(image.blob_path(image.digest).read_bytes())
    platforms = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert platforms == [("linux", "amd64"), ("linux", "arm64")]
    assert [m["digest"] for m in index["manifests"]] == [
        image.platform(p).manifest.digest for p in ("linux/amd64", "linux/arm64")
    ]
    assert len(image.blobs()) == 1 + 2 * (1 + 1 + 2)


def test_several_tags_share_one_layout(tmp_path: Path) -> None:
    one = generate_image(tmp_path, name="x", tag="one", seed=1, total_size=1000, layers=1)
    two = generate_image(tmp_path, name="x", tag="two", seed=2, total_size=1000, layers=1)
    again = generate_image(tmp_path, name="x", tag="one", seed=3, total_size=1000, layers=1)
    assert layout_digest(tmp_path, "two") == two.digest
    assert layout_digest(tmp_path, "one") == again.digest != one.digest
    assert len(json.loads((tmp_path / "index.json").read_text())["manifests"]) == 2


def test_hosts_toml(tmp_path: Path) -> None:
    path = write_hosts_toml(
        tmp_path, "127.0.0.1:5000", "http://127.0.0.1:5000", ["http://127.0.0.2:5001"]
    )
    assert path == tmp_path / "127.0.0.1:5000" / "hosts.toml"
    parsed = tomllib.loads(path.read_text())
    assert parsed == {
        "server": "http://127.0.0.1:5000",
        "host": {"http://127.0.0.2:5001": {"capabilities": ["pull", "resolve"]}},
    }
    bare = tomllib.loads(write_hosts_toml(tmp_path, "r", "http://127.0.0.1:1").read_text())
    assert bare == {"server": "http://127.0.0.1:1", "host": {}}


def _real(out: Path, seed: int = 5) -> GeneratedImage:
    return generate_image(
        out,
        name="kit/real",
        tag="v1",
        seed=seed,
        total_size=1 << 20,
        layers=3,
        files_per_layer=2,
        multi_arch=True,
        compression=("gzip", "zstd"),
        content="tree",
        attestations=True,
    )


def _tar_bytes(image: GeneratedImage, layer: Blob) -> bytes:
    data = image.blob_path(layer.digest).read_bytes()
    if layer.media_type == LAYER_GZIP_MEDIA_TYPE:
        return gzip.decompress(data)
    assert layer.media_type == LAYER_ZSTD_MEDIA_TYPE
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def test_compressed_layers_carry_their_uncompressed_digest(tmp_path: Path) -> None:
    image = _real(tmp_path)
    check_blobs(image)
    for platform_image in image.images:
        types = [layer.media_type for layer in platform_image.layers]
        assert types == [LAYER_GZIP_MEDIA_TYPE, LAYER_ZSTD_MEDIA_TYPE, LAYER_GZIP_MEDIA_TYPE]
        config = json.loads(image.blob_path(platform_image.config.digest).read_bytes())
        diff_ids = [
            "sha256:" + hashlib.sha256(_tar_bytes(image, layer)).hexdigest()
            for layer in platform_image.layers
        ]
        assert config["rootfs"]["diff_ids"] == diff_ids
        assert [layer.diff_id for layer in platform_image.layers] == diff_ids
        assert all(layer.diff_id != layer.digest for layer in platform_image.layers)
    # The same arguments give the same blobs, compressed ones included.
    assert _real(tmp_path / "again").blobs() == image.blobs()
    assert not set(_real(tmp_path / "other", seed=6).layers) & set(image.layers)


def test_tree_layers_hold_what_real_layers_hold(tmp_path: Path) -> None:
    image = _real(tmp_path)
    layers = image.platform("linux/amd64").layers
    kinds: list[dict[str, tarfile.TarInfo]] = []
    for layer in layers:
        with tarfile.open(fileobj=io.BytesIO(_tar_bytes(image, layer))) as tar:
            kinds.append({member.name: member for member in tar.getmembers()})
    first, second = kinds[0], kinds[1]
    assert first["etc/os-release"].isfile() and first["layer-0/bin"].isdir()
    assert first["layer-0/bin/current"].issym()
    assert first["layer-0/bin/current"].linkname == "data-0.bin"
    assert first["layer-0/bin/data-0.hardlink"].islnk()
    assert first["layer-0/bin/data-0.hardlink"].linkname == "layer-0/bin/data-0.bin"
    # Whiteouts of what the layer below added: a file, and a directory made opaque.
    assert second["layer-0/.wh.gone.txt"].isfile()
    assert second["layer-0/opaque/.wh..wh..opq"].isfile()
    assert "layer-0/gone.txt" in first and "layer-0/opaque/old.txt" in first
    view = tree_view(len(layers))
    assert "layer-2/gone.txt" in view.files and "layer-0/gone.txt" in view.absent
    # Half the data files are text: the layer compresses, as real ones do.
    payload = sum(m.size for m in first.values() if m.name.startswith("layer-0/bin/data-"))
    assert layers[0].size < 0.9 * payload


def test_attestation_manifests_sit_in_the_index_as_buildkit_puts_them(tmp_path: Path) -> None:
    image = _real(tmp_path)
    index = json.loads(image.blob_path(image.digest).read_bytes())
    platforms = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert platforms == [("linux", "amd64"), ("linux", "arm64")] + [("unknown", "unknown")] * 2
    amd64_attestation = index["manifests"][2]
    assert amd64_attestation["annotations"] == {
        "vnd.docker.reference.digest": image.platform("linux/amd64").manifest.digest,
        "vnd.docker.reference.type": "attestation-manifest",
    }
    manifest = json.loads(image.blob_path(amd64_attestation["digest"]).read_bytes())
    assert manifest["layers"][0]["mediaType"] == "application/vnd.in-toto+json"
    assert len(image.extras) == 6 and set(image.extras) <= set(image.blobs())


def test_chain_id_is_the_oci_one(tmp_path: Path) -> None:
    platform_image = _real(tmp_path).platform("linux/amd64")
    a, b, c = (layer.diff_id for layer in platform_image.layers)
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert platform_image.chain_id == abc


def test_bad_compression_and_content_are_refused(tmp_path: Path) -> None:
    for bad in ({"compression": "lz4"}, {"content": "empty"}, {"compression": ()}):
        with pytest.raises(ValueError):
            generate_image(
                tmp_path,
                name="x",
                tag="v1",
                seed=1,
                total_size=10,
                layers=1,
                **bad,  # type: ignore[arg-type]
            )
