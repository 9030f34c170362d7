"""A batch's CPU: samples read from the real /proc, seconds between two, shares of the cores."""

from __future__ import annotations

import os
import time

import pytest

from bench.harness.cpu import CpuSample, CpuShare, sample, spent
from bench.harness.results import Cpu


def test_a_sample_sees_this_process_burn_cpu() -> None:
    before = sample([None], [os.getpid()])
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after = sample([None], [os.getpid()])
    cpu = spent(before, after, case="c", mode="mirror", phase="create", batch=0)
    assert cpu.mirror >= 0.25
    assert cpu.busy >= cpu.mirror * 0.9  # the machine's count includes this process
    assert cpu.containerd == 0.0
    assert cpu.wall >= 0.25
    assert cpu.cores == len(os.sched_getaffinity(0))


def test_a_daemon_restarted_between_samples_counts_nothing_rather_than_less() -> None:
    before = CpuSample(at=0.0, busy=10.0, containerd=50.0, mirror=5.0, clients=1.0)
    after = CpuSample(at=2.0, busy=13.0, containerd=0.4, mirror=6.0, clients=1.5)
    cpu = spent(before, after, case="c", mode="m", phase="p", batch=3)
    assert (cpu.wall, cpu.busy, cpu.containerd, cpu.mirror, cpu.clients) == (
        2.0,
        3.0,
        0.0,
        1.0,
        0.5,
    )
    assert cpu.batch == 3


def test_shares_sum_seconds_over_the_cores_time_of_every_batch() -> None:
    records = [
        Cpu("c", "m", "update", 0, 1.0, 2, 2.0, 1.0, 0.5, 0.1),
        Cpu("c", "m", "update", 1, 3.0, 2, 2.0, 1.0, 0.5, 0.3),
    ]
    share = CpuShare.of(records)
    assert share is not None
    assert share.busy == pytest.approx(0.5)
    assert share.containerd == pytest.approx(0.25)
    assert share.mirror == pytest.approx(0.125)
    assert share.clients == pytest.approx(0.05)
    assert share.line() == "cpu  50% of 2 cores (containerd 25%, mirrors 12%, ctr 5%)"
    assert CpuShare.of([]) is None
