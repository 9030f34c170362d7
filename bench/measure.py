"""Measuring helpers for the benchmarks: wrk output, statistics, target checks, /proc sampling.

Parsing and statistics are pure; the `/proc` readers and `RssSampler` touch only
`/proc/<pid>` of processes the benchmark started.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

MIB = 1024 * 1024

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
class Summary:
    median: float
    min: float
    max: float
    n: int

    def format(self, digits: int = 0) -> str:
        return f"{self.median:,.{digits}f} ({self.min:,.{digits}f}-{self.max:,.{digits}f})"


def summarize(values: Iterable[float]) -> Summary:
    data = list(values)
    if not data:
        raise ValueError("nothing to summarize")
    return Summary(statistics.median(data), min(data), max(data), len(data))


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Run-by-run ratios of measurements taken side by side (repeat i with repeat i)."""
    return [a / b for a, b in zip(numerators, denominators, strict=True) if b > 0]


@dataclass(frozen=True)
class Check:
    """One target: `value` compared with `threshold` by `op` (">=" or "<")."""

    name: str
    value: float
    op: str
    threshold: float
    unit: str = "x"

    @property
    def passed(self) -> bool:
        if self.op == ">=":
            return self.value >= self.threshold
        if self.op == "<":
            return self.value < self.threshold
        raise ValueError(f"unknown comparison {self.op!r}")

    def line(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return (
            f"[{mark}] {self.name}: {self.value:.2f}{self.unit} "
            f"(target {self.op} {self.threshold:g}{self.unit})"
        )

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}


# /proc readers. CPU times are in clock ticks; RSS in KiB as the kernel prints it.

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # Fields after the parenthesised command name, which may contain spaces.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def system_task_seconds() -> float:
    """CPU time the machine's tasks used (user + nice + system over every core).

    Interrupt and softirq time is left out: on loopback it is the benchmark's own
    packets, handled in whichever task's context they arrive.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]]
    return sum(fields) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`), 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """Direct children of `pid` (nginx workers of their master)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def pids_named(prefix: str) -> list[int]:
    """Pids whose command name starts with `prefix` (kernel threads such as `ksoftirqd/`)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if Path(entry.path, "comm").read_text().startswith(prefix):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def group_cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
    return total


def group_rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += status_kib(pid, "VmRSS")
        except OSError:
            continue
    return total


@dataclass
class RssSampler:
    """Samples the summed VmRSS of each named process group every `interval` seconds."""

    groups: dict[str, Callable[[], Sequence[int]]]
    interval: float = 0.05
    samples: dict[str, list[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.samples = {name: [] for name in self.groups}
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def _sample(self) -> None:
        for name, pids in self.groups.items():
            self.samples[name].append(group_rss_kib(pids()))

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def max_mib(self, name: str) -> float:
        return max(self.samples[name], default=0) / 1024
