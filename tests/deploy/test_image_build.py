"""`make image` without PyInstaller: the layout container/image.py writes, from a
stand-in program directory; and the chart's default image is the one it builds.

The real program, frozen, run under containerd as the chart runs it: test_image.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from container import image
from mirror.version import VERSION
from tests.deploy.chart import CHART_DIR, RENDERED_DEFAULT

ROOT = Path(__file__).resolve().parents[2]
EPOCH = 1704067200


@pytest.fixture
def onedir(tmp_path: Path) -> Path:
    """A stand-in for PyInstaller's one-directory build: a dynamic executable named
    `mirror` (coreutils' `true`, linked to glibc) and a data file in `_internal`."""
    program = tmp_path / "program" / "mirror"
    (program / "_internal").mkdir(parents=True)
    shutil.copy(shutil.which("true") or "/bin/true", program / "mirror")
    (program / "_internal" / "data.txt").write_text("data\n")
    os.symlink("data.txt", program / "_internal" / "alias.txt")
    return program


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def _manifest(layout: Path) -> dict[str, Any]:
    (top,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert top["annotations"]["org.opencontainers.image.ref.name"] == VERSION
    return dict(json.loads(_blob(layout, top["digest"])))


def _members(layout: Path) -> list[tarfile.TarInfo]:
    (layer,) = _manifest(layout)["layers"]
    with tarfile.open(fileobj=io.BytesIO(_blob(layout, layer["digest"]))) as tar:
        return tar.getmembers()


def _resolve(members: dict[str, tarfile.TarInfo], path: str) -> tarfile.TarInfo:
    """Follow symlinks inside the layer, as the kernel does inside the container."""
    parts, done = path.strip("/").split("/"), ""
    for _ in range(40):
        for i, part in enumerate(parts):
            candidate = f"{done}/{part}".strip("/")
            member = members.get(candidate)
            assert member is not None, f"{candidate} not in the layer"
            if member.issym():
                base = "" if member.linkname.startswith("/") else done
                parts = [*f"{base}/{member.linkname}".strip("/").split("/"), *parts[i + 1 :]]
                done = ""
                break
            done = candidate
        else:
            return members[done]
    raise AssertionError(f"symlink loop at {path}")


def test_two_builds_give_the_same_digest(onedir: Path, tmp_path: Path) -> None:
    first = image.build(onedir, tmp_path / "one")
    for path in onedir.rglob("*"):  # what the build host's clock did must not matter
        os.utime(path, (EPOCH + 12345, EPOCH + 12345), follow_symlinks=False)
    second = image.build(onedir, tmp_path / "two")
    assert first.digest == second.digest
    assert sorted(os.listdir(tmp_path / "one" / "blobs" / "sha256")) == sorted(
        os.listdir(tmp_path / "two" / "blobs" / "sha256")
    )


def test_the_layer_holds_the_program_its_c_library_and_users(onedir: Path, tmp_path: Path) -> None:
    layout = tmp_path / "image"
    image.build(onedir, layout)
    members = _members(layout)
    names = [m.name for m in members]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert all((m.uid, m.gid, m.mtime) == (0, 0, EPOCH) for m in members)
    by_name = {m.name: m for m in members}
    program = by_name["opt/trio-mirror/mirror"]
    assert program.isfile() and program.mode == 0o755
    assert by_name["opt/trio-mirror/_internal/alias.txt"].linkname == "data.txt"
    # The kernel starts the executable through its interpreter, which must resolve
    # inside the image, and so must the C library it links.
    linked = image.parse_ldd(
        subprocess.run(["ldd", str(onedir / "mirror")], capture_output=True, text=True).stdout
    )
    (interpreter,) = [p for p in linked if Path(p).name.startswith("ld-linux")]
    assert _resolve(by_name, interpreter).isfile()
    libc = _resolve(by_name, "/lib/x86_64-linux-gnu/libc.so.6")
    assert libc.size == os.path.getsize("/lib/x86_64-linux-gnu/libc.so.6")
    layer = io.BytesIO(_blob(layout, _manifest(layout)["layers"][0]["digest"]))
    with tarfile.open(fileobj=layer) as tar:
        passwd = tar.extractfile("etc/passwd")
        assert passwd is not None
        lines = passwd.read().decode().split()
    users = {line.split(":")[0]: line.split(":")[2] for line in lines}
    assert users == {"root": "0", "mirror": str(image.NONROOT_UID)}


def test_config_and_layer_digests(onedir: Path, tmp_path: Path) -> None:
    layout = tmp_path / "image"
    top = image.build(onedir, layout)
    manifest = _manifest(layout)
    assert top.digest == "sha256:" + hashlib.sha256(_blob(layout, top.digest)).hexdigest()
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    compressed = _blob(layout, layer["digest"])
    assert layer["size"] == len(compressed)
    assert compressed[4:8] == b"\0\0\0\0"  # gzip's mtime
    assert compressed[3] & 0x08 == 0  # no file name in the gzip header
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(compressed)).hexdigest()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    run = config["config"]
    assert run["Entrypoint"] == ["/opt/trio-mirror/mirror"] and run["Cmd"] == ["registry"]
    assert run["User"] == "0:0"
    assert run["Labels"]["org.opencontainers.image.version"] == VERSION
    assert set(run["ExposedPorts"]) == {"5000/tcp", "5001/udp", "9090/tcp"}


def test_parse_ldd() -> None:
    output = (
        "\tlinux-vdso.so.1 (0x00007ffd5d3f2000)\n"
        "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f0d4c0a0000)\n"
        "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0d4bebf000)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f0d4c0c6000)\n"
    )
    assert image.parse_ldd(output) == [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    with pytest.raises(image.ImageError, match=r"libgone\.so\.2 not found"):
        image.parse_ldd("\tlibgone.so.2 => not found\n")


def test_host_entries_follow_symlinks_and_refuse_loops(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "libx.so.1").write_bytes(b"\x7fELF")
    os.symlink("usr/lib", tmp_path / "lib")
    entries = {e.name: e for e in image.host_entries([f"{tmp_path}/lib/libx.so.1"])}
    base = str(tmp_path).lstrip("/")
    assert entries[f"{base}/lib"].target == "usr/lib"
    assert entries[f"{base}/usr/lib/libx.so.1"].source == tmp_path / "usr" / "lib" / "libx.so.1"
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    with pytest.raises(image.ImageError, match="too many symlinks"):
        image.host_entries([f"{tmp_path}/loop-a/x"])


def test_a_missing_program_is_refused(tmp_path: Path) -> None:
    with pytest.raises(image.ImageError, match="not a PyInstaller one-directory build"):
        image.build(tmp_path, tmp_path / "image")


def test_the_charts_default_image_is_the_one_make_image_builds() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["image"]
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert values["repository"] == image.DEFAULT_REPOSITORY
    assert values["tag"] == "" and values["digest"] == ""  # the tag is the appVersion
    assert chart["appVersion"] == chart["version"] == VERSION
    assert pyproject["project"]["version"] == VERSION
    rendered = [
        line.split("image: ")[1].strip('"')
        for line in RENDERED_DEFAULT.read_text().splitlines()
        if line.strip().startswith("image: ")
    ]
    assert rendered and set(rendered) == {f"{image.DEFAULT_REPOSITORY}:{VERSION}"}


def test_an_upgrade_with_one_set_keeps_the_default_image() -> None:
    # The tutorial's `helm upgrade ... --set mirrorResolveTimeout=50ms`, without
    # --reuse-values: every value not set is the chart's default again, and the
    # default image is what `make image` builds and pushes.
    from tests.deploy.chart import render_set

    pytest.importorskip("helm_python")
    text = "\n".join(render_set("mirrorResolveTimeout=50ms").values())
    images = {
        line.split("image: ")[1].strip('"')
        for line in text.splitlines()
        if line.strip().startswith("image: ")
    }
    assert images == {f"{image.DEFAULT_REPOSITORY}:{VERSION}"}
    assert "--mirror-resolve-timeout=50ms" in text


def test_make_image_pushes_where_push_says() -> None:
    dry = subprocess.run(
        ["make", "-n", "image", "PUSH=registry.example.com/team/trio-mirror"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "MIRROR_ONEDIR=1" in dry and "--distpath build/onedir" in dry
    assert "-m container.image build/onedir/mirror --out dist/image" in dry
    assert "--push registry.example.com/team/trio-mirror" in dry
