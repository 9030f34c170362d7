"""`mirror configuration` / `mirror cleanup` on a real directory tree."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mirror.containerd.hosts import (
    ConfigurationError,
    add_mirror_configuration,
    cleanup_mirror_configuration,
    parse_registry_url,
    render_hosts_toml,
)

TARGETS = ["http://127.0.0.1:30020", "http://127.0.0.1:30021"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_render_matches_spegel_format() -> None:
    docker = parse_registry_url("https://docker.io", allow_wildcard=True)
    targets = [parse_registry_url(t, allow_wildcard=False) for t in TARGETS]
    assert render_hosts_toml(docker, targets, resolve_tags=True) == (
        "server = 'https://registry-1.docker.io'\n"
        "\n"
        "[host.'http://127.0.0.1:30020']\n"
        "capabilities = ['pull', 'resolve']\n"
        "dial_timeout = '200ms'\n"
        "\n"
        "[host.'http://127.0.0.1:30021']\n"
        "capabilities = ['pull', 'resolve']\n"
        "dial_timeout = '200ms'\n"
        # Ours: a target after the first may be another node's instance (hosts.py).
        "[host.'http://127.0.0.1:30021'.header]\n"
        "X-Mirror-Fallback = 'true'\n"
    )
    wildcard = parse_registry_url("_default", allow_wildcard=True)
    text = render_hosts_toml(wildcard, targets[:1], resolve_tags=False)
    assert "server" not in text
    assert tomllib.loads(text)["host"]["http://127.0.0.1:30020"]["capabilities"] == ["pull"]


def test_render_with_basic_auth_matches_spegel() -> None:
    registry = parse_registry_url("http://foo.bar:5000", allow_wildcard=True)
    targets = [
        parse_registry_url(t, allow_wildcard=False)
        for t in ("http://127.0.0.1:5000", "http://127.0.0.1:5001")
    ]
    text = render_hosts_toml(
        registry, targets, resolve_tags=True, authorization="Basic aGVsbG86d29ybGQ="
    )
    # Spegel's expected file for hello/world (pkg/oci/containerd/mirror_test.go), and
    # our fallback header on the second target.
    assert text == (
        "server = 'http://foo.bar:5000'\n"
        "\n"
        "[host.'http://127.0.0.1:5000']\n"
        "capabilities = ['pull', 'resolve']\n"
        "dial_timeout = '200ms'\n"
        "[host.'http://127.0.0.1:5000'.header]\n"
        "Authorization = 'Basic aGVsbG86d29ybGQ='\n"
        "\n"
        "[host.'http://127.0.0.1:5001']\n"
        "capabilities = ['pull', 'resolve']\n"
        "dial_timeout = '200ms'\n"
        "[host.'http://127.0.0.1:5001'.header]\n"
        "Authorization = 'Basic aGVsbG86d29ybGQ='\n"
        "X-Mirror-Fallback = 'true'\n"
    )


def test_cli_configuration_writes_the_basic_auth_header(tmp_path: Path) -> None:
    secret = tmp_path / "basic-auth"
    secret.mkdir()
    (secret / "username").write_bytes(b"hello")
    (secret / "password").write_bytes(b"world")
    config = tmp_path / "certs.d"
    configure = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirror",
            "configuration",
            f"--containerd-registry-config-path={config}",
            "--mirrored-registries",
            "https://docker.io",
            "--mirror-targets",
            *TARGETS,
        ],
        env={**os.environ, "BASIC_AUTH_DIR": str(secret)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert configure.returncode == 0, configure.stderr
    path = config / "docker.io" / "hosts.toml"
    hosts = tomllib.loads(path.read_text())["host"]
    first, second = TARGETS
    assert hosts[first]["header"] == {"Authorization": "Basic aGVsbG86d29ybGQ="}
    assert hosts[second]["header"] == {
        "Authorization": "Basic aGVsbG86d29ybGQ=",
        "X-Mirror-Fallback": "true",
    }
    # A credential inside: for containerd (root) only.
    assert path.stat().st_mode & 0o777 == 0o600
    assert "aGVsbG8" not in configure.stderr


def test_configuration_then_cleanup_restores_byte_for_byte(tmp_path: Path) -> None:
    config = tmp_path / "certs.d"
    (config / "docker.io").mkdir(parents=True)
    (config / "docker.io" / "hosts.toml").write_bytes(
        b"server = 'https://registry-1.docker.io'\n# mine\n"
    )
    (config / "docker.io" / "ca.crt").write_bytes(b"-----CERT-----\n")
    (config / "quay.io").mkdir()
    (config / "quay.io" / "hosts.toml").write_bytes(b"server = 'https://quay.io'\n")
    before = _snapshot(config)

    written = add_mirror_configuration(config, ["https://docker.io", "https://ghcr.io"], TARGETS)
    assert [p.parent.name for p in written] == ["docker.io", "ghcr.io"]
    docker = tomllib.loads((config / "docker.io" / "hosts.toml").read_text())
    assert docker["server"] == "https://registry-1.docker.io"
    assert list(docker["host"]) == TARGETS
    assert not (config / "quay.io").exists()
    assert (config / "_backup" / "quay.io" / "hosts.toml").exists()

    # Running it again never overwrites the backup with our own files.
    add_mirror_configuration(config, ["https://docker.io"], TARGETS[:1])
    assert (config / "_backup" / "docker.io" / "hosts.toml").read_bytes().endswith(b"# mine\n")

    assert cleanup_mirror_configuration(config) is True
    assert _snapshot(config) == before
    assert not (config / "_backup").exists()
    assert cleanup_mirror_configuration(config) is False
    assert _snapshot(config) == before


def test_prepend_existing_keeps_foreign_hosts_after_ours(tmp_path: Path) -> None:
    config = tmp_path / "certs.d"
    (config / "docker.io").mkdir(parents=True)
    (config / "docker.io" / "hosts.toml").write_text(
        "server = 'https://registry-1.docker.io'\n\n"
        "[host.'https://corp-mirror.example']\n"
        "capabilities = ['pull']\n"
        "ca = 'corp.crt'\n"
        "[host.'https://corp-mirror.example'.header]\n"
        "X-Team = 'gpu'\n"
    )
    (config / "docker.io" / "corp.crt").write_text("CERT")
    add_mirror_configuration(config, ["https://docker.io"], TARGETS, prepend_existing=True)
    document = tomllib.loads((config / "docker.io" / "hosts.toml").read_text())
    assert list(document["host"]) == [*TARGETS, "https://corp-mirror.example"]
    assert document["host"]["https://corp-mirror.example"]["header"] == {"X-Team": "gpu"}
    assert (config / "docker.io" / "corp.crt").read_text() == "CERT"


def test_empty_registry_list_writes_the_wildcard(tmp_path: Path) -> None:
    written = add_mirror_configuration(tmp_path, [], TARGETS[:1], resolve_tags=False)
    assert written == [tmp_path / "_default" / "hosts.toml"]


@pytest.mark.parametrize(
    ("registries", "targets"),
    [
        (["docker.io"], TARGETS),
        (["https://docker.io/v2"], TARGETS),
        (["https://docker.io"], ["ftp://x"]),
        (["https://docker.io"], []),
    ],
)
def test_invalid_urls_are_refused_before_touching_anything(
    tmp_path: Path, registries: list[str], targets: list[str]
) -> None:
    (tmp_path / "keep").mkdir()
    with pytest.raises(ConfigurationError):
        add_mirror_configuration(tmp_path, registries, targets)
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_cli_configuration_and_cleanup(tmp_path: Path) -> None:
    env = {**os.environ, "CONTAINERD_REGISTRY_CONFIG_PATH": str(tmp_path)}
    configure = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirror",
            "configuration",
            "--mirror-targets",
            *TARGETS,
            "--mirrored-registries",
            "https://docker.io",
            "--resolve-tags=false",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert configure.returncode == 0, configure.stderr
    document = tomllib.loads((tmp_path / "docker.io" / "hosts.toml").read_text())
    assert document["host"][TARGETS[0]]["capabilities"] == ["pull"]
    bad = subprocess.run(
        [sys.executable, "-m", "mirror", "configuration", "--mirror-targets", "not-a-url"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
