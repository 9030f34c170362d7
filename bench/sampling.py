"""CPU and memory of named process groups while a measurement runs.

`RssSampler` samples each group's summed VmRSS in a thread every `interval`
seconds; `UsageMeter` wraps one measurement: CPU seconds of each group, of the
whole machine and of the kernel's softirq threads before and after, and the
RSS samples between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from bench.procstat import group_cpu_seconds, group_rss_kib, system_task_seconds

# A group's pids, asked again at every sample (a process may be restarted).
PidSource = Callable[[], Sequence[int]]


@dataclass
class RssSampler:
    """Samples the summed VmRSS of each named process group every `interval` seconds."""

    groups: Mapping[str, PidSource]
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


@dataclass(frozen=True)
class Usage:
    """What the machine spent during one measurement, in CPU seconds."""

    group_cpu_s: dict[str, float]
    machine_busy_s: float  # every task: user + nice + system over all cores
    softirq_cpu_s: float  # the kernel's ksoftirqd threads
    rss_samples_kib: dict[str, list[int]]

    def rss_max_mib(self, name: str) -> float:
        return max(self.rss_samples_kib[name], default=0) / 1024


class UsageMeter:
    """`with UsageMeter(groups) as meter: <measure>`, then `meter.usage`."""

    def __init__(
        self,
        groups: Mapping[str, PidSource],
        *,
        softirq_pids: Sequence[int] = (),
        interval: float = 0.05,
    ) -> None:
        self.groups = groups
        self.softirq_pids = list(softirq_pids)
        self._sampler = RssSampler(groups, interval)
        self._cpu_before: dict[str, float] = {}
        self._busy_before = 0.0
        self._softirq_before = 0.0
        self._usage: Usage | None = None

    def __enter__(self) -> UsageMeter:
        self._usage = None
        self._cpu_before = {name: group_cpu_seconds(pids()) for name, pids in self.groups.items()}
        self._busy_before = system_task_seconds()
        self._softirq_before = group_cpu_seconds(self.softirq_pids)
        self._sampler.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sampler.__exit__(exc_type, exc, tb)
        busy = system_task_seconds() - self._busy_before
        cpu = {
            name: group_cpu_seconds(pids()) - self._cpu_before[name]
            for name, pids in self.groups.items()
        }
        softirq = group_cpu_seconds(self.softirq_pids) - self._softirq_before
        self._usage = Usage(cpu, busy, softirq, self._sampler.samples)

    @property
    def usage(self) -> Usage:
        if self._usage is None:
            raise RuntimeError("the measurement has not finished")
        return self._usage
