"""`/proc` parsing from sample text, and the readers against this very process."""

from __future__ import annotations

import os

import pytest

from bench.procstat import (
    cpu_seconds,
    group_cpu_seconds,
    group_rss_kib,
    parse_busy_ticks,
    parse_cpu_model,
    parse_kib_field,
    parse_pid_stat,
    parse_task_ticks,
    status_kib,
)
from bench.sampling import UsageMeter

# A command name with a space and a `)` in it: only the last `)` ends it.
PID_STAT = (
    "4242 (nginx: wor) ker) S 4241 4241 4241 0 -1 4194624 1201 0 0 0 "
    "37 12 0 0 20 0 1 0 1838771 11386880 1024 18446744073709551615 1 1 0 0 0 0 0 "
    "1073745920 402745863 0 0 0 17 1 0 0 0 0 0\n"
)

PROC_STAT = """\
cpu  4705 150 1120 16250 520 30 80 0 0 0
cpu0 2352 75 560 8125 260 15 40 0 0 0
intr 114930548 113199788 3 0 5 263 0 4 [...]
"""

STATUS = """\
Name:\tmirror
State:\tS (sleeping)
VmHWM:\t   66560 kB
VmRSS:\t   65012 kB
Threads:\t3
"""

CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
processor\t: 1
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
"""


def test_pid_stat_fields_come_after_the_last_parenthesis() -> None:
    stat = parse_pid_stat(PID_STAT)
    assert (stat.ppid, stat.utime_ticks, stat.stime_ticks) == (4241, 37, 12)
    assert stat.cpu_ticks == 49


def test_machine_task_time_is_user_nice_system_of_the_cpu_line() -> None:
    assert parse_task_ticks(PROC_STAT) == 4705 + 150 + 1120
    assert parse_busy_ticks(PROC_STAT) == 4705 + 150 + 1120 + 30 + 80
    with pytest.raises(ValueError):
        parse_task_ticks("intr 1 2 3\n")


def test_kib_fields_and_their_absence() -> None:
    assert parse_kib_field(STATUS, "VmRSS") == 65012
    assert parse_kib_field(STATUS, "VmHWM") == 66560
    assert parse_kib_field(STATUS, "VmSwap") == 0
    assert parse_kib_field("MemTotal:       24576000 kB\n", "MemTotal") == 24576000


def test_cpu_model_is_the_first_model_name() -> None:
    assert parse_cpu_model(CPUINFO) == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    assert parse_cpu_model("processor\t: 0\nBogoMIPS\t: 50.00\n") == ""


def test_readers_on_this_process_and_on_a_pid_that_is_gone() -> None:
    me = os.getpid()
    assert cpu_seconds(me) > 0
    assert status_kib(me, "VmRSS") > 0
    # Pid 0 has no /proc entry: a group counts what it can read.
    assert group_cpu_seconds([0]) == 0.0
    assert group_rss_kib([0]) == 0
    assert group_rss_kib([me, 0]) > 0


def test_usage_meter_reports_cpu_and_rss_of_its_groups() -> None:
    me = os.getpid()
    with UsageMeter({"self": lambda: [me]}, softirq_pids=[0], interval=0.01) as meter:
        sum(i * i for i in range(200_000))  # some CPU to see
    usage = meter.usage
    assert usage.group_cpu_s["self"] >= 0.0
    assert usage.machine_busy_s >= 0.0
    assert usage.softirq_cpu_s == 0.0
    assert usage.rss_samples_kib["self"] and usage.rss_max_mib("self") > 0


def test_usage_is_not_there_before_the_measurement_ends() -> None:
    meter = UsageMeter({})
    with pytest.raises(RuntimeError):
        _ = meter.usage
