"""Benchmark images in the layout cache: pause base, random layers, reuse by parameters."""

from __future__ import annotations

import json
from pathlib import Path

from bench.harness.cases import Case
from bench.harness.images import build_image, build_pair


def _manifest(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text())


def test_image_is_pause_plus_random_layers_and_reused(tmp_path: Path) -> None:
    case = Case.of("1MB", 2)
    image = build_image(case, "v1", tmp_path)
    assert image.layout_dir == tmp_path / "v1-1MB-2-s0"
    manifest = _manifest(image.layout_dir, image.digest)
    layers = manifest["layers"]
    assert len(layers) == 3 and layers[0]["size"] < 20_000
    assert sum(layer["size"] for layer in layers[1:]) > case.size
    config = _manifest(image.layout_dir, manifest["config"]["digest"])
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in layers]
    blobs = {p.name for p in (image.layout_dir / "blobs" / "sha256").iterdir()}
    # Only what the manifest references: the generator's first config and manifest are gone.
    referenced = {d["digest"].removeprefix("sha256:") for d in [*layers, manifest["config"]]}
    assert blobs == referenced | {image.digest.removeprefix("sha256:")}
    index = json.loads((image.layout_dir / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.digest
    assert build_image(case, "v1", tmp_path) == image  # from the marker, not regenerated


def test_v1_and_v2_share_no_blob(tmp_path: Path) -> None:
    v1, v2 = build_pair(Case.of("1MB", 1), tmp_path)
    digests = [{d["digest"] for d in _manifest(i.layout_dir, i.digest)["layers"]} for i in (v1, v2)]
    assert not digests[0] & digests[1]
    assert abs(v1.size - v2.size) < 64  # only the JSON of config and manifest differs
