"""`Node.run` in this process against a real containerd: start order, stop, startup errors."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bench.kit.containerd import ContainerdNode
from bench.kit.procs import free_port
from mirror.node import Node, NodeAddresses
from mirror.options import RegistryOptions
from mirror.version import VERSION
from tests.httpclient import fetch

pytestmark = pytest.mark.integration

UNKNOWN = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerdNode]:
    with ContainerdNode("node-1", tmp_path_factory.mktemp("lifecycle")) as node:
        yield node


def _options(containerd: ContainerdNode, data_dir: Path) -> RegistryOptions:
    return RegistryOptions(
        bootstrap_kind="static",
        registry_addr=f"127.0.0.1:{free_port()}",
        router_addr=f"127.0.0.1:{free_port()}",
        metrics_addr=f"127.0.0.1:{free_port()}",
        containerd_sock=str(containerd.address),
        containerd_content_path=str(containerd.content_path),
        containerd_config_file="",
        data_dir=str(data_dir),
    )


async def test_started_node_answers_and_stops_cleanly(
    containerd: ContainerdNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    node = Node(_options(containerd, tmp_path / "data"))
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(node.run)
        assert isinstance(addresses, NodeAddresses)
        host, port = addresses.registry[0]
        registry = f"{host}:{port}"
        # Every part is up once run() reports started: the hot path answers a miss
        # (nobody provides it) with the spec's 404, and the metrics port serves.
        miss = await trio.to_thread.run_sync(
            fetch, registry, f"/v2/team/app/blobs/{UNKNOWN}?ns=docker.io"
        )
        assert miss.status == 404 and miss.error_code() == "BLOB_UNKNOWN"
        metrics = await trio.to_thread.run_sync(
            fetch, addresses.metrics[0].removeprefix("http://"), "/metrics"
        )
        assert metrics.status == 200 and b"spegel_mirror_requests_total" in metrics.body
        assert (tmp_path / "data").is_dir()
        node.stop()
    messages = [record.getMessage() for record in caplog.records]
    assert "running" in messages
    assert not [m for m in messages if "CTRL + C" in m]  # hypercorn's banner stays out
    # run() returned on its own after stop(): the nursery closed without a cancel.
    with pytest.raises(OSError):
        await trio.to_thread.run_sync(fetch, registry, "/v2/")


async def test_stop_before_start_returns_once_started(
    containerd: ContainerdNode, tmp_path: Path
) -> None:
    node = Node(_options(containerd, tmp_path / "data"))
    node.stop()
    with trio.fail_after(30):
        await node.run()


def _run_mirror(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror", "registry", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--bootstrap-kind=dns"], "--dns-bootstrap-domain"),
        (["--bootstrap-kind=gossip"], "--bootstrap-kind"),
        (["--bootstrap-kind=static", "--router-key-file=/nonexistent/key"], "--router-key-file"),
        ([], "--bootstrap-kind is required"),
    ],
)
def test_startup_error_is_one_log_line_naming_the_flag(
    args: list[str], names: str, tmp_path: Path
) -> None:
    _assert_one_error_naming(names, *args, tmp_path=tmp_path)


def test_unreadable_basic_auth_is_one_log_line_naming_the_flag(tmp_path: Path) -> None:
    secret = tmp_path / "basic-auth"
    (secret / "username").mkdir(parents=True)  # a Secret key mounted wrong
    (secret / "password").write_text("pw")
    _assert_one_error_naming(
        "--basic-auth-dir",
        "--bootstrap-kind=static",
        f"--basic-auth-dir={secret}",
        tmp_path=tmp_path,
    )


def _assert_one_error_naming(names: str, *args: str, tmp_path: Path) -> None:
    result = _run_mirror(
        *args,
        f"--containerd-sock={tmp_path / 'none.sock'}",
        "--containerd-config-file=",
        f"--containerd-content-path={tmp_path}",
        f"--data-dir={tmp_path / 'data'}",
        f"--registry-addr=127.0.0.1:{free_port()}",
        f"--router-addr=127.0.0.1:{free_port()}",
        f"--metrics-addr=127.0.0.1:{free_port()}",
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("{") and json.loads(line)["level"] == "ERROR"
    ]
    assert len(errors) == 1, result.stderr
    assert names in json.loads(errors[0])["msg"]


@pytest.mark.parametrize("flag", ["--registry-addr", "--router-addr", "--metrics-addr"])
def test_an_address_in_use_is_one_line_naming_the_flag(
    containerd: ContainerdNode, tmp_path: Path, flag: str
) -> None:
    taken = socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM if flag == "--router-addr" else socket.SOCK_STREAM
    )
    with taken:
        taken.bind(("127.0.0.1", 0))
        if flag != "--router-addr":
            taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        addresses = {
            "--registry-addr": f"127.0.0.1:{free_port()}",
            "--router-addr": f"127.0.0.1:{free_port()}",
            "--metrics-addr": f"127.0.0.1:{free_port()}",
            flag: busy,
        }
        result = _run_mirror(
            "--bootstrap-kind=static",
            f"--containerd-sock={containerd.address}",
            f"--containerd-content-path={containerd.content_path}",
            "--containerd-config-file=",
            f"--data-dir={tmp_path / 'data'}",
            *(f"{name}={value}" for name, value in addresses.items()),
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [json.loads(line) for line in result.stderr.splitlines() if '"ERROR"' in line]
    assert len(errors) == 1, result.stderr
    assert f"{flag}={busy}" in errors[0]["msg"]


async def test_metrics_tell_the_process_the_version_and_the_loops_lag(
    containerd: ContainerdNode, tmp_path: Path
) -> None:
    node = Node(_options(containerd, tmp_path / "data"))
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(node.run)
        metrics_host = addresses.metrics[0].removeprefix("http://")
        await trio.sleep(0.35)
        # Hold the loop: the watcher's wake-up (every 0.1 s) comes at least 0.35 s late,
        # whatever its phase (held 0.3 s, it came 0.2-0.3 s late, and once not past 0.25).
        time.sleep(0.45)  # noqa: ASYNC251 (the point: a blocked loop)
        await trio.sleep(0.25)
        metrics = await trio.to_thread.run_sync(fetch, metrics_host, "/metrics")
        node.stop()
    text = metrics.body.decode()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["process_resident_memory_bytes"] > 0
    assert samples["process_open_fds"] > 0
    assert samples[f'mirror_build_info{{version="{VERSION}"}}'] == 1
    assert samples["mirror_event_loop_lag_seconds_count"] >= 3
    # The 450 ms the loop was held shows: a wake-up came later than 250 ms.
    assert (
        samples['mirror_event_loop_lag_seconds_bucket{le="0.25"}']
        < samples["mirror_event_loop_lag_seconds_count"]
    )
