"""The systemd units for bare-metal hosts: they verify, their command lines parse with
the shipped environment file, and the cleanup script really restores containerd's files."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.kit.procs import free_port
from dht import load_cluster_key
from mirror.cli import parse_args

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "container" / "systemd"
UNITS = ("mirror.service", "mirror-cleanup.service")
BINARY = "/usr/local/bin/mirror"
CLEANUP_SCRIPT = "/usr/local/lib/trio-mirror/mirror-cleanup"
KEY_SCRIPT = "/usr/local/lib/trio-mirror/mirror-router-key"
ENV_FILE = "/etc/default/mirror"


def directives(unit: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file (keys may repeat), sections flattened."""
    out: dict[str, list[str]] = {}
    for line in (SYSTEMD / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def environment_file() -> dict[str, str]:
    env = {}
    for line in (SYSTEMD / "mirror.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def command(line: str) -> list[str]:
    argv = shlex.split(line)
    assert argv[0] == BINARY
    return argv[1:]


def test_commands_parse_with_the_environment_file() -> None:
    unit = directives("mirror.service")
    assert unit["EnvironmentFile"] == [ENV_FILE]
    env = environment_file()
    key, pre = unit["ExecStartPre"]  # the cluster key first, then containerd's configuration
    assert key == KEY_SCRIPT
    (start,) = unit["ExecStart"]
    configuration = parse_args(command(pre), environ=env)
    assert configuration.command == "configuration"
    assert configuration.mirror_targets == ("http://127.0.0.1:5000",)
    assert configuration.mirrored_registries == ()
    registry = parse_args(command(start), environ=env)
    assert registry.command == "registry"
    assert (registry.registry_addr, registry.router_addr, registry.metrics_addr) == (
        ":5000",
        ":5001",
        ":9090",
    )
    assert registry.bootstrap_kind == "static"
    assert registry.static_bootstrap_peers == ("10.0.0.11:5001", "10.0.0.12:5001", "10.0.0.13:5001")
    assert registry.data_dir == "/var/lib/trio-mirror"
    assert unit["StateDirectory"] == ["trio-mirror"]
    # Authenticated by default: the key lives in the state directory, writable there.
    assert registry.router_key_file == "/var/lib/trio-mirror/router.key"
    # The registry's own port is what containerd is pointed at.
    assert configuration.mirror_targets[0].endswith(registry.registry_addr)


def test_cleanup_unit_runs_the_script_and_stops_the_mirror() -> None:
    unit = directives("mirror-cleanup.service")
    assert unit["ExecStart"] == [CLEANUP_SCRIPT]
    assert unit["Conflicts"] == ["mirror.service"]
    assert unit["Type"] == ["oneshot"]
    assert os.access(SYSTEMD / "mirror-cleanup", os.X_OK)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that executables exist: point the units at stand-ins.
    stub = tmp_path / "mirror"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    paths = []
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text()
        text = text.replace(CLEANUP_SCRIPT, str(SYSTEMD / "mirror-cleanup"))
        text = text.replace(KEY_SCRIPT, str(SYSTEMD / "mirror-router-key"))
        text = text.replace(BINARY, str(stub)).replace(ENV_FILE, str(SYSTEMD / "mirror.env"))
        (tmp_path / unit).write_text(text)
        paths.append(str(tmp_path / unit))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_cleanup_script_restores_containerd_configuration(tmp_path: Path) -> None:
    config = tmp_path / "certs.d"
    original = "server = 'https://registry-1.docker.io'\n"
    (config / "docker.io").mkdir(parents=True)
    (config / "docker.io" / "hosts.toml").write_text(original)
    shim = tmp_path / "mirror"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mirror "$@"\n')
    shim.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "MIRROR": str(shim),
        "CLEANUP_ADDR": f"127.0.0.1:{free_port()}",
        "CONTAINERD_REGISTRY_CONFIG_PATH": str(config),
        "MIRROR_TARGETS": "http://127.0.0.1:5000",
    }
    subprocess.run([str(shim), "configuration"], env=env, check=True, timeout=30)
    assert (config / "_default" / "hosts.toml").is_file()
    result = subprocess.run(
        [str(SYSTEMD / "mirror-cleanup")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (config / "docker.io" / "hosts.toml").read_text() == original
    assert sorted(p.name for p in config.iterdir()) == ["docker.io"]


def _make_key(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYSTEMD / "mirror-router-key")],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_unit_makes_a_cluster_key_once(tmp_path: Path) -> None:
    key_file = tmp_path / "state" / "router.key"
    made = _make_key({"ROUTER_KEY_FILE": str(key_file)})
    assert made.returncode == 0, made.stderr
    assert "every node of the cluster" in made.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = load_cluster_key(key_file)
    assert len(key) == 64 and int(key, 16) >= 0
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["router.key"]  # no leftovers
    # Started again (or the key copied in from another host): kept as it is.
    again = _make_key({"ROUTER_KEY_FILE": str(key_file)})
    assert again.returncode == 0 and again.stderr == ""
    assert load_cluster_key(key_file) == key
    other = tmp_path / "other.key"
    assert _make_key({"ROUTER_KEY_FILE": str(other)}).returncode == 0
    assert load_cluster_key(other) != key  # random, not a constant


def test_the_unit_leaves_an_empty_key_alone(tmp_path: Path) -> None:
    key_file = tmp_path / "router.key"
    key_file.write_text("")  # a broken copy: the unit fails rather than replace it
    assert _make_key({"ROUTER_KEY_FILE": str(key_file)}).returncode != 0
    assert key_file.read_text() == ""
    # Opted out (ROUTER_KEY_FILE empty): nothing made, the DHT is open.
    assert _make_key({"ROUTER_KEY_FILE": ""}).returncode == 0
    assert _make_key({}).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["router.key"]
