"""`--router-key-file`: optional as in Spegel, but an open DHT is a warning at start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mirror.cli import parse_args
from mirror.node import dht_config
from mirror.options import RegistryOptions


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_without_a_key_file_the_dht_is_open_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    options = parse_args(["registry"], environ={})
    assert isinstance(options, RegistryOptions) and options.router_key_file == ""
    with caplog.at_level(logging.WARNING, logger="mirror"):
        config = dht_config(options, 5000)
    assert config.cluster_key is None
    [warning] = [m for m in _warnings(caplog) if "unauthenticated" in m]
    assert "--router-key-file" in warning


def test_a_key_file_seals_the_dht_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "router.key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    options = parse_args(["registry"], environ={"ROUTER_KEY_FILE": str(key_file)})
    with caplog.at_level(logging.WARNING, logger="mirror"):
        config = dht_config(options, 5000)
    assert config.cluster_key == b"0123456789abcdef0123456789abcdef"
    assert not [m for m in _warnings(caplog) if "unauthenticated" in m]
