"""What the kernel says about processes and the machine, read from `/proc`.

The parsers take the file's text and are pure; the readers open `/proc` only
when called (nothing is read at import time) and only for pids the benchmark
names. CPU times come in clock ticks and are returned in seconds; memory
figures are KiB, as the kernel prints them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class PidStat:
    """The fields of `/proc/<pid>/stat` the benchmarks use."""

    ppid: int
    utime_ticks: int
    stime_ticks: int

    @property
    def cpu_ticks(self) -> int:
        return self.utime_ticks + self.stime_ticks


def parse_pid_stat(text: str) -> PidStat:
    """`/proc/<pid>/stat`; the command name in parentheses may hold spaces and `)`."""
    fields = text.rsplit(")", 1)[1].split()
    # After the name: state, ppid, ..., utime (14th field of the line), stime (15th).
    return PidStat(ppid=int(fields[1]), utime_ticks=int(fields[11]), stime_ticks=int(fields[12]))


def _cpu_line(text: str) -> list[int]:
    """The tick counts of the `cpu` line of `/proc/stat` (user, nice, system, idle,
    iowait, irq, softirq, steal, ...)."""
    first = text.split("\n", 1)[0].split()
    if not first or first[0] != "cpu":
        raise ValueError(f"not the first line of /proc/stat: {text[:40]!r}")
    return [int(v) for v in first[1:]]


def parse_task_ticks(text: str) -> int:
    """user + nice + system over every core, from the `cpu` line of `/proc/stat`.

    Interrupt and softirq time is left out: on loopback it is the benchmark's own
    packets, handled in whichever task's context they arrive.
    """
    return sum(_cpu_line(text)[0:3])


def parse_busy_ticks(text: str) -> int:
    """`parse_task_ticks` plus interrupt and softirq time: every tick a core was busy
    (loopback TCP's receive work included), steal and idle left out."""
    user, nice, system, _idle, _iowait, irq, softirq = _cpu_line(text)[0:7]
    return user + nice + system + irq + softirq


def parse_kib_field(text: str, key: str) -> int:
    """A `kB` field (`VmRSS`, `VmHWM` in status, `MemTotal` in meminfo); 0 if absent."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def parse_cpu_model(text: str) -> str:
    """The first `model name` of `/proc/cpuinfo`; empty if there is none (some ARM kernels)."""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


@functools.cache
def clock_ticks() -> int:
    """The kernel's USER_HZ: `/proc` CPU times are in these."""
    return os.sysconf("SC_CLK_TCK")


def pid_stat(pid: int) -> PidStat:
    return parse_pid_stat((PROC / str(pid) / "stat").read_text())


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds."""
    return pid_stat(pid).cpu_ticks / clock_ticks()


def system_task_seconds() -> float:
    """CPU time the machine's tasks used (user + nice + system over every core)."""
    return parse_task_ticks((PROC / "stat").read_text()) / clock_ticks()


def system_busy_seconds() -> float:
    """CPU time every core was busy, interrupts and softirqs included."""
    return parse_busy_ticks((PROC / "stat").read_text()) / clock_ticks()


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`), 0 if absent."""
    return parse_kib_field((PROC / str(pid) / "status").read_text(), key)


def mem_total_kib() -> int:
    return parse_kib_field((PROC / "meminfo").read_text(), "MemTotal")


def cpu_model() -> str:
    try:
        return parse_cpu_model((PROC / "cpuinfo").read_text())
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(entry.name) for entry in os.scandir(PROC) if entry.name.isdigit()]


def children(pid: int) -> list[int]:
    """Direct children of `pid` (nginx workers of their master); scans every pid."""
    found = []
    for candidate in _pids():
        try:
            if pid_stat(candidate).ppid == pid:
                found.append(candidate)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or a line we cannot read
    return found


def pids_named(prefix: str) -> list[int]:
    """Pids whose command name starts with `prefix` (kernel threads such as `ksoftirqd/`)."""
    found = []
    for candidate in _pids():
        try:
            if (PROC / str(candidate) / "comm").read_text().startswith(prefix):
                found.append(candidate)
        except OSError:
            continue
    return found


def group_cpu_seconds(pids: Sequence[int]) -> float:
    """Summed CPU seconds of `pids`; a pid that has gone counts nothing."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
    return total


def group_rss_kib(pids: Sequence[int]) -> int:
    """Summed VmRSS of `pids`; a pid that has gone counts nothing."""
    total = 0
    for pid in pids:
        try:
            total += status_kib(pid, "VmRSS")
        except OSError:
            continue
    return total
