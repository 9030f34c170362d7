"""ManagedProcess and the wait helpers, on real child processes."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from bench.kit.procs import (
    KitError,
    ManagedProcess,
    free_port,
    kill_recorded,
    pid_alive,
    recorded_pids,
    wait_for_tcp,
    wait_for_unix_socket,
)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_start_stop_records_and_forgets_pid(tmp_path: Path) -> None:
    proc = ManagedProcess(python("import time; time.sleep(60)"), log_path=tmp_path / "p.log")
    proc.start()
    pid = proc.pid
    assert pid is not None and proc.alive() and pid_alive(pid)
    assert pid in recorded_pids()
    proc.stop()
    assert not proc.alive() and not pid_alive(pid)
    assert pid not in recorded_pids()


def test_output_goes_to_log_and_tail(tmp_path: Path) -> None:
    code = "import sys\nfor i in range(100): print('line', i)\nprint('oops', file=sys.stderr)"
    with ManagedProcess(python(code), log_path=tmp_path / "p.log") as proc:
        assert proc.wait(10) == 0
    tail = proc.tail(3).splitlines()
    assert tail == ["line 98", "line 99", "oops"]


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)"
    )
    proc = ManagedProcess(python(code), log_path=tmp_path / "p.log")
    proc.start()
    deadline = time.monotonic() + 10
    while proc.tail(1) != "ready" and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert proc.stop(timeout=0.3) == -9
    assert time.monotonic() - started < 5


def test_restart_gives_new_pid(tmp_path: Path) -> None:
    with ManagedProcess(python("import time; time.sleep(60)"), log_path=tmp_path / "p.log") as p:
        first = p.pid
        p.restart()
        assert p.alive() and p.pid != first
        assert first is not None and not pid_alive(first)


def test_wait_for_tcp_and_free_port_on_other_loopback(tmp_path: Path) -> None:
    port = free_port("127.0.0.2")
    code = f"import socket, time\ns = socket.create_server(('127.0.0.2', {port}))\ntime.sleep(60)"
    with ManagedProcess(python(code), log_path=tmp_path / "p.log") as proc:
        wait_for_tcp("127.0.0.2", port, timeout=10, proc=proc)


def test_wait_fails_fast_with_log_tail_when_process_dies(tmp_path: Path) -> None:
    code = "import sys; print('cannot bind'); sys.exit(3)"
    with ManagedProcess(python(code), log_path=tmp_path / "p.log") as proc:
        started = time.monotonic()
        with pytest.raises(KitError, match="cannot bind"):
            wait_for_tcp("127.0.0.1", free_port(), timeout=30, proc=proc)
        assert time.monotonic() - started < 10


def test_wait_for_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with pytest.raises(KitError, match="timed out"):
        wait_for_unix_socket(path, timeout=0.1)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        wait_for_unix_socket(path, timeout=1)


def test_atexit_safety_net_kills_recorded(tmp_path: Path) -> None:
    proc = ManagedProcess(python("import time; time.sleep(60)"), log_path=tmp_path / "p.log")
    proc.start()
    pid = proc.pid
    assert pid is not None
    kill_recorded()
    assert not pid_alive(pid) and pid not in recorded_pids()
