"""Spegel's chart, unchanged, runs `mirror`: its exact container arguments are accepted
(and mean what they mean in Spegel), and the commands start."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from bench.kit.procs import free_port
from mirror.cli import parse_args
from tests.deploy import spegel_args as spegel
from tests.deploy.conftest import (
    PYTHON_MIRROR,
    NodeWithImage,
    free_udp_port,
    http_status,
    start_mirror_process,
)

ENV = {"DATA_DIR": "", "GOMEMLIMIT": "134217728", "NODE_IP": "127.0.0.1"}


def test_registry_defaults_parse_as_spegel_means_them() -> None:
    options = parse_args(spegel.with_node_ip(spegel.REGISTRY), environ=ENV)
    assert options.command == "registry"
    assert options.mirror_resolve_timeout == pytest.approx(0.020)
    assert options.mirror_resolve_retries == 3
    assert (options.registry_addr, options.router_addr, options.metrics_addr) == (
        ":5000",
        ":5001",
        ":9090",
    )
    assert options.bootstrap_kind == "dns"
    assert options.dns_bootstrap_domain == "spegel-bootstrap.spegel.svc.cluster.local."
    assert options.containerd_sock == "/run/containerd/containerd.sock"
    assert options.containerd_namespace == "k8s.io"
    assert options.debug_web_enabled is True
    assert options.mirrored_registries == ()
    assert options.data_dir == ""  # DATA_DIR="" from the chart's env


def test_registry_with_options_parse() -> None:
    options = parse_args(spegel.REGISTRY_WITH_OPTIONS, environ=ENV)
    assert options.log_level == "DEBUG"
    assert options.mirrored_registries == ("https://docker.io", "https://ghcr.io")
    assert options.registry_filters == (".*:latest$", "^docker\\.io/library/")
    assert options.otel_insecure is True
    assert options.otel_endpoint == "otel-collector:4318"
    assert options.containerd_content_path.endswith("io.containerd.content.v1.content")


def test_configuration_and_cleanup_args_parse() -> None:
    configuration = parse_args(spegel.with_node_ip(spegel.CONFIGURATION), environ=ENV)
    assert configuration.mirror_targets == ("http://127.0.0.1:30020", "http://127.0.0.1:30021")
    assert (configuration.resolve_tags, configuration.prepend_existing) == (True, False)
    with_options = parse_args(spegel.with_node_ip(spegel.CONFIGURATION_WITH_OPTIONS), environ={})
    assert with_options.mirrored_registries == ("https://docker.io", "https://ghcr.io")
    assert with_options.mirror_targets[-1] == "https://mirror.example.com"
    assert (with_options.resolve_tags, with_options.prepend_existing) == (False, True)
    cleanup = parse_args(spegel.CLEANUP, environ={})
    assert (cleanup.addr, cleanup.containerd_registry_config_path) == (
        ":8080",
        "/etc/containerd/certs.d",
    )
    wait = parse_args(spegel.CLEANUP_WAIT, environ={})
    assert wait.probe_endpoint == "spegel-cleanup.spegel.svc.cluster.local.:8080"


def _run(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYTHON_MIRROR, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _hosts(path: Path) -> dict[str, object]:
    return tomllib.loads(path.read_text())


def test_configuration_init_container_writes_hosts_toml(tmp_path: Path) -> None:
    config = tmp_path / "certs.d"
    (config / "docker.io").mkdir(parents=True)
    (config / "docker.io" / "hosts.toml").write_text("server = 'https://registry-1.docker.io'\n")
    args = spegel.replace_flag(
        spegel.with_node_ip(spegel.CONFIGURATION), containerd_registry_config_path=str(config)
    )
    result = _run(args)
    assert result.returncode == 0, result.stderr
    hosts = _hosts(config / "_default" / "hosts.toml")
    assert list(hosts["host"]) == ["http://127.0.0.1:30020", "http://127.0.0.1:30021"]  # type: ignore[call-overload]
    own, fallback = hosts["host"].values()  # type: ignore[attr-defined]
    assert own == {"capabilities": ["pull", "resolve"], "dial_timeout": "200ms"}
    # The node port target may lead to another node's instance (hosts.py).
    assert fallback == {**own, "header": {"X-Mirror-Fallback": "true"}}
    # What was there is backed up, and Spegel's cleanup arguments put it back.
    assert (config / "_backup" / "docker.io" / "hosts.toml").is_file()
    assert not (config / "docker.io").exists()


def test_configuration_with_options(tmp_path: Path) -> None:
    config = tmp_path / "certs.d"
    args = spegel.replace_flag(
        spegel.with_node_ip(spegel.CONFIGURATION_WITH_OPTIONS),
        containerd_registry_config_path=str(config),
    )
    result = _run(args)
    assert result.returncode == 0, result.stderr
    docker = _hosts(config / "docker.io" / "hosts.toml")
    assert docker["server"] == "https://registry-1.docker.io"
    assert list(docker["host"]) == [  # type: ignore[call-overload]
        "http://127.0.0.1:30020",
        "http://127.0.0.1:30021",
        "https://mirror.example.com",
    ]
    assert docker["host"]["https://mirror.example.com"]["capabilities"] == ["pull"]  # type: ignore[index]
    assert _hosts(config / "ghcr.io" / "hosts.toml")["server"] == "https://ghcr.io"
    assert not (config / "_default").exists()


def test_cleanup_hook_restores_and_cleanup_wait_sees_it(tmp_path: Path) -> None:
    config = tmp_path / "certs.d"
    original = "server = 'https://registry-1.docker.io'\n"
    (config / "docker.io").mkdir(parents=True)
    (config / "docker.io" / "hosts.toml").write_text(original)
    configure = spegel.replace_flag(
        spegel.with_node_ip(spegel.CONFIGURATION), containerd_registry_config_path=str(config)
    )
    assert _run(configure).returncode == 0
    address = f"127.0.0.1:{free_port()}"
    cleanup = spegel.replace_flag(
        spegel.CLEANUP, containerd_registry_config_path=str(config), addr=address
    )
    server = start_mirror_process(
        [*PYTHON_MIRROR, *cleanup],
        workdir=tmp_path / "cleanup",
        probe_url=f"http://{address}/readyz",
    )
    try:
        assert (config / "docker.io" / "hosts.toml").read_text() == original
        assert not (config / "_default").exists() and not (config / "_backup").exists()
        wait = spegel.replace_flag(spegel.CLEANUP_WAIT, probe_endpoint=address)
        # Spegel's defaults (3 probes, 2s apart) stay; only the pace comes from PERIOD.
        result = subprocess.run(
            [*PYTHON_MIRROR, *wait],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin", "PERIOD": "100ms"},
            check=False,
        )
        assert result.returncode == 0, result.stderr
    finally:
        assert server.stop() == 0


@pytest.mark.integration
def test_registry_container_starts_against_containerd(
    node_with_image: NodeWithImage, tmp_path: Path
) -> None:
    env = node_with_image
    host = "127.0.0.1"
    registry, metrics = f"{host}:{free_port(host)}", f"{host}:{free_port(host)}"
    # Remapped: listeners to free loopback ports, containerd's paths to the kit's
    # daemon, the bootstrap name to one that resolves from /etc/hosts (no DNS traffic).
    args = spegel.replace_flag(
        spegel.REGISTRY,
        registry_addr=registry,
        router_addr=f"{host}:{free_udp_port(host)}",
        metrics_addr=metrics,
        containerd_sock=str(env.containerd.address),
        containerd_content_path=str(env.containerd.content_path),
        dns_bootstrap_domain="localhost",
    )
    process = start_mirror_process(
        [*PYTHON_MIRROR, *args],
        workdir=tmp_path,
        probe_url=f"http://{registry}/livez",
        env=ENV,
    )
    try:
        assert http_status(f"http://{registry}/readyz") in (200, 503)
        assert http_status(f"http://{metrics}/metrics") == 200
        image = env.image
        layer = image.layers[0]
        url = f"http://{registry}/v2/{image.name}/blobs/{layer.digest}?ns={env.upstream.host}"
        assert http_status(url) == 200
    finally:
        assert process.stop() == 0
