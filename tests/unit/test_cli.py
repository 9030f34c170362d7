from __future__ import annotations

import re
import subprocess
import sys

import pytest

from mirror.cli import UsageError, parse_args
from mirror.durations import parse_duration


def test_defaults_match_spegel() -> None:
    options = parse_args(["registry"], environ={})
    assert options.registry_addr == ":5000"
    assert options.router_addr == ":5001"
    assert options.metrics_addr == ":9090"
    assert options.containerd_sock == "/run/containerd/containerd.sock"
    assert options.containerd_namespace == "k8s.io"
    assert options.containerd_content_path == "/var/lib/containerd/io.containerd.content.v1.content"
    assert options.data_dir == "/var/lib/spegel"
    assert options.mirror_resolve_timeout == pytest.approx(0.020)
    assert options.mirror_resolve_retries == 3
    assert options.debug_web_enabled is True
    assert options.mirrored_registries == ()
    assert options.log_level == "INFO"


def test_flag_syntax_forms() -> None:
    options = parse_args(
        [
            "registry",
            "--registry-addr=127.0.0.2:5000",
            "--router-addr",
            "127.0.0.2:5001",
            "--mirrored-registries",
            "https://docker.io",
            "https://ghcr.io",
            "--debug-web-enabled=false",
            "--mirror-resolve-timeout=50ms",
            "--log-level=DEBUG",
        ],
        environ={},
    )
    assert options.registry_addr == "127.0.0.2:5000"
    assert options.router_addr == "127.0.0.2:5001"
    assert options.mirrored_registries == ("https://docker.io", "https://ghcr.io")
    assert options.debug_web_enabled is False
    assert options.mirror_resolve_timeout == pytest.approx(0.05)
    assert options.log_level == "DEBUG"
    assert parse_args(["registry", "--debug-web-enabled"], environ={}).debug_web_enabled is True


def test_environment_fills_unset_flags_only() -> None:
    environ = {
        "REGISTRY_ADDR": ":6000",
        "MIRRORED_REGISTRIES": "https://docker.io,https://ghcr.io",
        "DEBUG_WEB_ENABLED": "false",
        "MIRROR_RESOLVE_RETRIES": "5",
    }
    options = parse_args(["registry", "--registry-addr=:7000"], environ=environ)
    assert options.registry_addr == ":7000"
    assert options.mirrored_registries == ("https://docker.io", "https://ghcr.io")
    assert options.debug_web_enabled is False
    assert options.mirror_resolve_retries == 5


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["registry", "--mirror-resolve-timeout=soon"], {}),
        (["registry", "--debug-web-enabled=maybe"], {}),
        (["registry", "--registry-filters", "(unclosed"], {}),
        (["registry"], {"MIRROR_RESOLVE_RETRIES": "three"}),
        (["registry", "--mirror-stripe-width=0"], {}),
        (["configuration"], {}),
        (["cleanup"], {}),
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], environ: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv, environ=environ)


def test_stripe_width_from_the_flag_or_the_environment() -> None:
    assert parse_args(["registry"], environ={}).mirror_stripe_width == 4
    options = parse_args(["registry"], environ={"MIRROR_STRIPE_WIDTH": "1"})
    assert options.mirror_stripe_width == 1


def test_resolve_latest_tag_false_adds_filter() -> None:
    options = parse_args(["registry", "--resolve-latest-tag=false"], environ={})
    assert ":latest$" in options.registry_filters


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1.5s", 1.5), ("1m30s", 90), ("2h", 7200), ("100us", 1e-4), ("0", 0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "20", "ms", "1d", "1.5.5s", "20 ms"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_console_script_reports_usage_errors_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mirror", "registry", "--mirror-resolve-timeout=soon"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "mirror-resolve-timeout" in result.stderr
    assert "Traceback" not in result.stderr


def test_watch_takes_node_urls_as_positional_arguments() -> None:
    options = parse_args(["watch", "http://127.0.0.1:9090", "http://127.0.0.2:9090"], environ={})
    assert options.nodes == ("http://127.0.0.1:9090", "http://127.0.0.2:9090")
    with pytest.raises(UsageError, match="give one or more nodes"):
        parse_args(["watch"], environ={})


def test_version_flag_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mirror", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.startswith("mirror ")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["registry", "--registy-addr=:7000"],
            "unknown flag --registy-addr; did you mean --registry-addr?",
        ),
        (["registry", "--mirror-resolve-timout", "50ms"], "did you mean --mirror-resolve-timeout?"),
        (
            ["registry", "--no-such-thing"],
            "unknown flag --no-such-thing; see mirror registry --help",
        ),
        (["cleanup-wait", "--probe-endpoint=x:1", "stray"], "unexpected argument 'stray'"),
    ],
)
def test_unknown_flags_are_named_with_a_suggestion(argv: list[str], expected: str) -> None:
    with pytest.raises(UsageError, match=re.escape(expected)):
        parse_args(argv, environ={})
