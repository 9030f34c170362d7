"""Where a batch's CPU went on the local cluster: the machine's, and its daemons' shares.

Every node of the local cluster shares the machine's cores, so a pull time
means little without whether those cores were the limit. Around each batch
`measure` samples the machine's busy time (every core, interrupts included),
the containerd daemons', the mirrors' and the pull clients' (`ctr`: children
of this process, counted once reaped). `CpuShare.of` turns the recorded
seconds into fractions of what the cores could have given (pure).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.harness.results import Cpu
from bench.procstat import group_cpu_seconds, system_busy_seconds


@dataclass(frozen=True)
class CpuSample:
    at: float  # monotonic seconds
    busy: float  # CPU seconds, the whole machine
    containerd: float
    mirror: float
    clients: float


def sample(containerd_pids: Sequence[int | None], mirror_pids: Sequence[int | None]) -> CpuSample:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSample(
        at=time.monotonic(),
        busy=system_busy_seconds(),
        containerd=group_cpu_seconds([p for p in containerd_pids if p is not None]),
        mirror=group_cpu_seconds([p for p in mirror_pids if p is not None]),
        clients=children.ru_utime + children.ru_stime,
    )


def spent(
    before: CpuSample, after: CpuSample, *, case: str, mode: str, phase: str, batch: int
) -> Cpu:
    """The seconds between two samples (a daemon restarted meanwhile counts from 0)."""
    return Cpu(
        case=case,
        mode=mode,
        phase=phase,
        batch=batch,
        wall=after.at - before.at,
        cores=len(os.sched_getaffinity(0)),
        busy=max(0.0, after.busy - before.busy),
        containerd=max(0.0, after.containerd - before.containerd),
        mirror=max(0.0, after.mirror - before.mirror),
        clients=max(0.0, after.clients - before.clients),
    )


@dataclass(frozen=True)
class CpuShare:
    """CPU used, as fractions of the cores' time over the batches measured."""

    cores: int
    busy: float
    containerd: float
    mirror: float
    clients: float

    @classmethod
    def of(cls, records: Iterable[Cpu]) -> CpuShare | None:
        records = list(records)
        capacity = sum(r.wall * r.cores for r in records)
        if not records or capacity <= 0:
            return None
        return cls(
            cores=max(r.cores for r in records),
            busy=sum(r.busy for r in records) / capacity,
            containerd=sum(r.containerd for r in records) / capacity,
            mirror=sum(r.mirror for r in records) / capacity,
            clients=sum(r.clients for r in records) / capacity,
        )

    def line(self) -> str:
        return (
            f"cpu {self.busy:4.0%} of {self.cores} cores (containerd {self.containerd:.0%},"
            f" mirrors {self.mirror:.0%}, ctr {self.clients:.0%})"
        )
