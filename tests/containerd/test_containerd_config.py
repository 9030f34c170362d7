from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mirror.containerd.config import ConfigError, ContainerdConfig, load_config, parse_config

V2 = """
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  discard_unpacked_layers = true
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"""

V3 = """
version = 3
[plugins."io.containerd.cri.v1.images"]
  discard_unpacked_layers = false
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"
"""

V1 = """
[plugins.cri.registry]
  config_path = "/etc/containerd/certs.d"
[plugins.cri.containerd]
  discard_unpacked_layers = true
"""


def test_version_2() -> None:
    assert parse_config(tomllib.loads(V2)) == ContainerdConfig(2, "/etc/containerd/certs.d", True)


def test_version_3_and_path_list() -> None:
    config = parse_config(tomllib.loads(V3))
    assert config.version == 3
    assert config.discard_unpacked_layers is False
    assert config.config_dirs == (Path("/etc/containerd/certs.d"), Path("/etc/docker/certs.d"))


def test_version_1_when_no_version_key() -> None:
    assert parse_config(tomllib.loads(V1)) == ContainerdConfig(1, "/etc/containerd/certs.d", True)


def test_version_keys_do_not_leak_across_versions() -> None:
    # A v3 file with v2-style keys: containerd 2.x would not read them either.
    doc = tomllib.loads(V2.replace("version = 2", "version = 3"))
    assert parse_config(doc) == ContainerdConfig(3, None, False)


@pytest.mark.parametrize("doc", [{}, {"version": 2}, {"version": 2, "plugins": {}}])
def test_defaults(doc: dict[str, object]) -> None:
    config = parse_config(doc)
    assert config.config_path is None
    assert config.config_dirs == ()
    assert config.discard_unpacked_layers is False


def test_empty_config_path_is_unset() -> None:
    doc = {
        "version": 2,
        "plugins": {"io.containerd.grpc.v1.cri": {"registry": {"config_path": ""}}},
    }
    assert parse_config(doc).config_path is None


@pytest.mark.parametrize(
    "doc",
    [
        {"version": 4},
        {"version": 2, "plugins": {"io.containerd.grpc.v1.cri": {"registry": {"config_path": 1}}}},
        {
            "version": 3,
            "plugins": {"io.containerd.cri.v1.images": {"discard_unpacked_layers": "yes"}},
        },
    ],
)
def test_invalid(doc: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_config(doc)


def test_load_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "nope.toml") == ContainerdConfig(1, None, False)


def test_load_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(V2)
    assert load_config(tmp_path / "config.toml").config_path == "/etc/containerd/certs.d"


def test_load_follows_imports(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "config.toml").write_text('version = 2\nimports = ["conf.d/*.toml"]\n' + V2[12:])
    (tmp_path / "conf.d" / "10-mirror.toml").write_text(
        "version = 2\n"
        '[plugins."io.containerd.grpc.v1.cri".registry]\n'
        '  config_path = "/etc/mirror/certs.d"\n'
    )
    # The imported file replaces the whole CRI plugin table, as containerd merges it.
    assert load_config(tmp_path / "config.toml") == ContainerdConfig(
        2, "/etc/mirror/certs.d", False
    )


def test_load_rejects_bad_toml(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("version = = 2")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "config.toml")


def test_load_the_hosts_own_config() -> None:
    # Debian's packaged file: version 2 with a CRI section but no registry settings.
    if not Path("/etc/containerd/config.toml").exists():
        pytest.skip("no /etc/containerd/config.toml")
    assert load_config().version in (1, 2, 3)


def test_config_warnings_name_each_problem() -> None:
    from mirror.containerd.config import ContainerdConfig, config_warnings

    good = ContainerdConfig(2, "/etc/containerd/certs.d", False)
    assert config_warnings(good, "/etc/containerd/certs.d") == []
    unset = config_warnings(ContainerdConfig(2, None, False), "/etc/containerd/certs.d")
    assert len(unset) == 1 and "not set" in unset[0]
    elsewhere = config_warnings(ContainerdConfig(3, "/other", True), "/etc/containerd/certs.d")
    assert len(elsewhere) == 2
    assert "does not include" in elsewhere[0] and "discard_unpacked_layers" in elsewhere[1]
