"""Child processes with a recorded pid, a log file each, and stop-by-pid.

Every process started here is remembered until it is stopped; an `atexit`
hook kills whatever is still recorded, so an interrupted test run does not
leave daemons behind. Processes are only ever signalled by their own pid.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


class KitError(RuntimeError):
    """A test-kit component failed to start, answer or stop."""


_live_lock = threading.Lock()
_live: dict[int, subprocess.Popen[bytes]] = {}


def _record(popen: subprocess.Popen[bytes]) -> None:
    with _live_lock:
        _live[popen.pid] = popen


def _forget(pid: int) -> None:
    with _live_lock:
        _live.pop(pid, None)


def recorded_pids() -> list[int]:
    """Pids of processes started by the kit and not yet stopped."""
    with _live_lock:
        return list(_live)


def pid_alive(pid: int) -> bool:
    """True if `pid` names a process that has not exited (zombies count as exited)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    state = status.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


@atexit.register
def kill_recorded() -> None:
    """Safety net: SIGTERM, then SIGKILL, every recorded pid still running."""
    with _live_lock:
        popens = list(_live.values())
        _live.clear()
    for popen in popens:
        _terminate(popen, timeout=3.0)


def _terminate(popen: subprocess.Popen[bytes], timeout: float) -> int | None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGKILL)
            popen.wait()
    return popen.returncode


class StartStop:
    """`with component:` starts it and always stops it; a failed start stops what began."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def close(self) -> None:
        """What leaving the `with` block does; components that own files also remove them."""
        self.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ManagedProcess(StartStop):
    """One child process: started with Popen, output to a log file, stopped by pid."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} alive={self.alive()}>"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        if self.alive():
            raise KitError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env} if self.env is not None else None
        with open(self.log_path, "ab") as log:
            log.write(f"--- start: {self.argv!r}\n".encode())
            log.flush()
            # A new session keeps a terminal's Ctrl-C away from the child: the
            # kit decides the stop order, not the tty.
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        _record(self._popen)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self._popen is None:
            return None
        code = _terminate(self._popen, timeout)
        _forget(self._popen.pid)
        return code

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself; raises `subprocess.TimeoutExpired`."""
        if self._popen is None:
            raise KitError(f"{self.name} was never started")
        code = self._popen.wait(timeout)
        _forget(self._popen.pid)
        return code

    def restart(self, timeout: float = 10.0) -> None:
        self.stop(timeout)
        self.start()

    def tail(self, n: int = 40) -> str:
        """The last `n` lines of the log file."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256 * n))
                data = f.read()
        except FileNotFoundError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-n:])

    def check_alive(self) -> None:
        """Raise with the log tail if the process is not running."""
        if not self.alive():
            raise KitError(
                f"{self.name} (pid {self.pid}) exited with {self.returncode}; log tail:\n"
                + self.tail()
            )


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    *,
    what: str,
    proc: ManagedProcess | None = None,
    interval: float = 0.02,
) -> None:
    """Poll `predicate` until true; fail early if `proc` dies, else after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if proc is not None:
            proc.check_alive()
        if time.monotonic() >= deadline:
            tail = f"; log tail of {proc.name}:\n{proc.tail()}" if proc is not None else ""
            raise KitError(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(interval)


def tcp_connectable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unix_connectable(path: Path) -> bool:
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def wait_for_tcp(
    host: str, port: int, timeout: float = 10.0, proc: ManagedProcess | None = None
) -> None:
    wait_until(lambda: tcp_connectable(host, port), timeout, what=f"tcp {host}:{port}", proc=proc)


def wait_for_unix_socket(
    path: Path | str, timeout: float = 10.0, proc: ManagedProcess | None = None
) -> None:
    path = Path(path)
    wait_until(lambda: unix_connectable(path), timeout, what=f"unix socket {path}", proc=proc)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` for both TCP and UDP a moment ago (the usual bind-0 race applies).

    Both, because one number may serve a registry (TCP) and a router (UDP).
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise KitError(f"no port free for both TCP and UDP on {host}")


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived command to completion, raising `KitError` with its output on failure."""
    full_env = {**os.environ, **env} if env is not None else None
    argv = [str(a) for a in argv]
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )
    if check and result.returncode != 0:
        raise KitError(
            f"command failed ({result.returncode}): {' '.join(argv)}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result
