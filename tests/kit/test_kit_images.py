"""Generated OCI layouts: valid, deterministic, incompressible; and hosts.toml rendering."""

from __future__ import annotations

import hashlib
import json
import tarfile
import tomllib
import zlib
from pathlib import Path

from bench.kit.hosts import write_hosts_toml
from bench.kit.images import (
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    GeneratedImage,
    generate_image,
    layout_digest,
)

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
