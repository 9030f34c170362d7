"""wrk: its command line, running it, and reading what it prints.

Parsing is pure; `run_client` runs one wrk to completion and takes its CPU
time (every thread) from `wait4`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import MIB

# wrk formats sizes with 1024-based units and times from microseconds up.
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^([0-9.]+)([KMGT]?B)$")
_TIME_RE = re.compile(r"^([0-9.]+)(us|ms|s|m|h)$")

# A `done()` hook for `wrk -s`: exact totals, where the text report rounds to 2 decimals.
WRK_DONE_MARKER = "WRK_DONE "
WRK_DONE_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_DONE {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,'
    .. '"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f}\\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_command(
    url: str,
    *,
    threads: int,
    connections: int,
    duration: int,
    timeout_s: int,
    script: Path,
    latency: bool = False,
    headers: Sequence[str] = (),
) -> list[str]:
    """`wrk -t -c -d --timeout [--latency] -s script [-H header]... url`."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s"]
    argv += ["--timeout", f"{timeout_s}s"]
    if latency:
        argv.append("--latency")
    argv += ["-s", str(script)]
    for header in headers:
        argv += ["-H", header]
    return [*argv, url]


class ParseError(ValueError):
    """The text is not what the tool prints."""


def parse_size(text: str) -> float:
    """wrk's `1.99GB` -> bytes (1024-based)."""
    match = _SIZE_RE.match(text.strip())
    if match is None:
        raise ParseError(f"not a wrk size: {text!r}")
    return float(match[1]) * _SIZE_UNITS[match[2]]


def parse_duration(text: str) -> float:
    """wrk's `123.45ms` -> seconds."""
    match = _TIME_RE.match(text.strip())
    if match is None:
        raise ParseError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _TIME_UNITS[match[2]]


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes_read: float
    requests_per_s: float
    transfer_per_s: float  # bytes/s, from the `Transfer/sec` line
    latency_percentiles_s: dict[str, float]
    socket_errors: dict[str, int]
    non_2xx_3xx: int
    exact: dict[str, float] | None = None  # from the done() hook, when it ran

    @property
    def mib_per_s(self) -> float:
        """Exact when the done() hook reported, else from the rounded `Transfer/sec`."""
        if self.exact is not None and self.exact["duration_us"] > 0:
            return self.exact["bytes"] / MIB / (self.exact["duration_us"] / 1e6)
        return self.transfer_per_s / MIB

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx


_SUMMARY_RE = re.compile(r"^\s*(\d+) requests in ([0-9.]+\w+), ([0-9.]+[KMGT]?B) read", re.M)
_RPS_RE = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_TRANSFER_RE = re.compile(r"^Transfer/sec:\s+([0-9.]+[KMGT]?B)", re.M)
_PERCENTILE_RE = re.compile(r"^\s+(\d+)%\s+([0-9.]+\w+)\s*$", re.M)
_SOCKET_ERRORS_RE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def _search(pattern: re.Pattern[str], text: str, what: str) -> re.Match[str]:
    match = pattern.search(text)
    if match is None:
        raise ParseError(f"no {what} in wrk output:\n{text}")
    return match


def parse_wrk(output: str) -> WrkResult:
    summary = _search(_SUMMARY_RE, output, "'N requests in T, X read' line")
    errors = _SOCKET_ERRORS_RE.search(output)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if errors is not None:
        socket_errors = dict(zip(socket_errors, map(int, errors.groups()), strict=True))
    non_2xx = _NON_2XX_RE.search(output)
    return WrkResult(
        requests=int(summary[1]),
        duration_s=parse_duration(summary[2]),
        bytes_read=parse_size(summary[3]),
        requests_per_s=float(_search(_RPS_RE, output, "Requests/sec")[1]),
        transfer_per_s=parse_size(_search(_TRANSFER_RE, output, "Transfer/sec")[1]),
        latency_percentiles_s={p: parse_duration(t) for p, t in _PERCENTILE_RE.findall(output)},
        socket_errors=socket_errors,
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else 0,
        exact=parse_wrk_done(output),
    )


def parse_wrk_done(output: str) -> dict[str, float] | None:
    for line in output.splitlines():
        if line.startswith(WRK_DONE_MARKER):
            return {k: float(v) for k, v in json.loads(line[len(WRK_DONE_MARKER) :]).items()}
    return None


@dataclass(frozen=True)
class ClientRun:
    output: str  # stdout and stderr together
    cpu_s: float  # utime + stime of every thread
    wall_s: float


def run_client(argv: Sequence[str], timeout: float | None = None) -> ClientRun:
    """Run wrk to completion; its own rusage (all threads) comes from wait4.

    With `timeout`, a client still running after that many seconds is killed
    (and reported as failed).
    """
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    timer = threading.Timer(timeout, proc.kill) if timeout is not None else None
    try:
        if timer is not None:
            timer.start()
        assert proc.stdout is not None
        output = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if timer is not None:
            timer.cancel()
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{output}")
    return ClientRun(output, usage.ru_utime + usage.ru_stime, wall)
