from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mirror.containerd.config import (
    ConfigError,
    ContainerdConfig,
    load_config,
    parse_config,
    stream_cap_advice,
)

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


def test_version_3_use_local_image_pull() -> None:
    doc = tomllib.loads(V3)
    doc["plugins"]["io.containerd.cri.v1.images"]["use_local_image_pull"] = True
    assert parse_config(doc).use_local_image_pull is True
    assert parse_config(tomllib.loads(V3)).use_local_image_pull is False
    # Not a version 2 key: ignored there, as containerd 1.x has no such setting.
    v2 = {"version": 2, "plugins": {"io.containerd.grpc.v1.cri": {"use_local_image_pull": 1}}}
    assert parse_config(v2).use_local_image_pull is False
    with pytest.raises(ConfigError):
        parse_config(
            {"version": 3, "plugins": {"io.containerd.cri.v1.images": {"use_local_image_pull": 1}}}
        )


def test_path_list_with_the_transfer_service_is_named() -> None:
    from mirror.containerd.config import config_warnings

    ours = "/etc/containerd/certs.d"
    listed = f"{ours}:/etc/docker/certs.d"
    v3 = config_warnings(ContainerdConfig(3, listed, False), ours)
    assert len(v3) == 1
    assert "separated by ':'" in v3[0] and "transfer service" in v3[0]
    assert "use_local_image_pull" in v3[0] and not v3[0].startswith("if ")
    # Local pulls split the list: nothing to say.
    assert config_warnings(ContainerdConfig(3, listed, False, True), ours) == []
    # A version 2 file: 1.x splits the list; 2.x migrates the file and uses the transfer service.
    v2 = config_warnings(ContainerdConfig(2, listed, False), ours)
    assert len(v2) == 1 and v2[0].startswith("if this containerd is 2.x")
    assert config_warnings(ContainerdConfig(2, listed, False), ours, "1.6.20~ds1") == []
    exact = config_warnings(ContainerdConfig(2, listed, False), ours, "v2.2.0")
    assert len(exact) == 1 and exact[0].startswith("containerd's registry config_path")
    # discard_unpacked_layers makes containerd 2.x pull locally, which splits the list.
    discarding = config_warnings(ContainerdConfig(3, listed, True), ours)
    assert len(discarding) == 1 and "discard_unpacked_layers" in discarding[0]
    # One directory: no list problem whatever the version.
    assert config_warnings(ContainerdConfig(3, ours, False), ours, "v2.2.0") == []


def test_all_three_problems_at_once() -> None:
    from mirror.containerd.config import config_warnings

    warnings = config_warnings(ContainerdConfig(2, "/a:/b", True), "/etc/containerd/certs.d")
    assert len(warnings) == 3
    assert "does not include" in warnings[0]
    assert "separated by ':'" in warnings[1]
    assert "discard_unpacked_layers" in warnings[2]


def test_version_3_file_as_containerd_2_writes_it(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        "version = 3\n"
        "[plugins.'io.containerd.cri.v1.images']\n"
        "  discard_unpacked_layers = true\n"
        "  use_local_image_pull = false\n"
        "  [plugins.'io.containerd.cri.v1.images'.registry]\n"
        "    config_path = '/etc/containerd/certs.d'\n"
    )
    assert load_config(tmp_path / "config.toml") == ContainerdConfig(
        3, "/etc/containerd/certs.d", True, False
    )


def _downloads(text: str) -> int:
    return parse_config(tomllib.loads(text)).max_concurrent_downloads


def test_max_concurrent_downloads_where_each_version_keeps_it() -> None:
    assert _downloads("") == 3  # containerd's default
    assert _downloads("[plugins.cri]\nmax_concurrent_downloads = 5\n") == 5
    v2 = 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\nmax_concurrent_downloads = 8\n'
    assert _downloads(v2) == 8
    # 2.x pulls CRI images through the transfer service, which has its own limit ...
    transfer = '[plugins."io.containerd.transfer.v1.local"]\nmax_concurrent_downloads = 6\n'
    assert _downloads("version = 3\n" + transfer) == 6
    # ... unless the CRI plugin's differs from 3 (containerd then pulls locally) or
    # local pulls are asked for: then the CRI plugin's applies.
    cri = '[plugins."io.containerd.cri.v1.images"]\nmax_concurrent_downloads = 4\n'
    assert _downloads("version = 3\n" + cri + transfer) == 4
    local = '[plugins."io.containerd.cri.v1.images"]\nuse_local_image_pull = true\n'
    assert _downloads("version = 3\n" + local + transfer) == 3
    unlimited = '[plugins."io.containerd.transfer.v1.local"]\nmax_concurrent_downloads = 0\n'
    assert _downloads("version = 3\n" + unlimited) == 0


def test_a_max_concurrent_downloads_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_concurrent_downloads"):
        _downloads(
            'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\nmax_concurrent_downloads = "8"\n'
        )


def test_peer_streams_unlike_containerds_downloads_is_pointed_out() -> None:
    config = parse_config(
        tomllib.loads(
            'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\nmax_concurrent_downloads = 8\n'
        )
    )
    advice = stream_cap_advice(config, 3)
    assert advice is not None and "8 layers at once" in advice and "--peer-streams is 3" in advice
    assert stream_cap_advice(config, 8) is None
    assert stream_cap_advice(config, 0) is None  # no cap: nothing to match
    assert stream_cap_advice(parse_config({}), 3) is None  # both at their defaults
