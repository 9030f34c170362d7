"""Smoke test of the standalone executable built by `make binary` (PyInstaller).

Which binary: $MIRROR_BINARY if set; else, with MIRROR_BUILD_BINARY=1 (CI sets it),
one built fresh from container/binary/mirror.spec into a temporary directory
(about 25 s on 2 cores), so a stale dist/mirror is never what gets tested; else
dist/mirror when it exists; else the tests are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.kit.procs import free_port
from mirror.version import VERSION
from tests.deploy.conftest import (
    NodeWithImage,
    free_udp_port,
    http_status,
    pyinstaller_build,
    start_mirror_process,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mirror_binary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.environ.get("MIRROR_BINARY"):
        binary = Path(os.environ["MIRROR_BINARY"])
    elif os.environ.get("MIRROR_BUILD_BINARY") == "1":
        binary = pyinstaller_build(tmp_path_factory.mktemp("pyinstaller") / "dist")
    elif (ROOT / "dist" / "mirror").is_file():
        binary = ROOT / "dist" / "mirror"
    else:
        pytest.skip("no dist/mirror: run `make binary` or set MIRROR_BUILD_BINARY=1")
    assert os.access(binary, os.X_OK), binary
    yield binary


def test_version_json(mirror_binary: Path) -> None:
    result = subprocess.run(
        [str(mirror_binary), "version", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    info = json.loads(result.stdout)
    assert info["version"] == VERSION
    assert info["python"].startswith("3.")


def test_configuration_writes_hosts_toml(mirror_binary: Path, tmp_path: Path) -> None:
    config = tmp_path / "certs.d"
    subprocess.run(
        [
            str(mirror_binary),
            "configuration",
            f"--containerd-registry-config-path={config}",
            "--mirrored-registries",
            "https://ghcr.io",
            "--mirror-targets",
            "http://127.0.0.1:5000",
        ],
        check=True,
        timeout=60,
    )
    text = (config / "ghcr.io" / "hosts.toml").read_text()
    assert "server = 'https://ghcr.io'" in text
    assert "[host.'http://127.0.0.1:5000']" in text


def test_serves_a_blob_from_containerd(
    mirror_binary: Path, node_with_image: NodeWithImage, tmp_path: Path
) -> None:
    env = node_with_image
    host = "127.0.0.1"
    registry, metrics = f"{host}:{free_port(host)}", f"{host}:{free_port(host)}"
    args = [
        str(mirror_binary),
        "registry",
        "--bootstrap-kind=static",
        f"--containerd-sock={env.containerd.address}",
        f"--registry-addr={registry}",
        f"--router-addr={host}:{free_udp_port(host)}",
        f"--metrics-addr={metrics}",
        "--containerd-content-path=",
        f"--data-dir={tmp_path / 'data'}",
    ]
    # The one-file binary unpacks itself on start: give it its own temp dir.
    process = start_mirror_process(
        args,
        workdir=tmp_path,
        probe_url=f"http://{registry}/readyz",
        env={"TMPDIR": str(tmp_path)},
    )
    try:
        for layer in env.image.layers:
            url = (
                f"http://{registry}/v2/{env.image.name}/blobs/{layer.digest}?ns={env.upstream.host}"
            )
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read()
                assert response.status == 200
            assert len(body) == layer.size
            assert "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
        # The metrics front end (hypercorn + quart) and the debug page's bundled files.
        assert http_status(f"http://{metrics}/metrics") == 200
        with urllib.request.urlopen(f"http://{metrics}/debug/web/", timeout=10) as response:
            assert b"<html" in response.read().lower()
    finally:
        assert process.stop() == 0
    # The node identity went where --data-dir said (it is not empty).
    assert any((tmp_path / "data").iterdir())
