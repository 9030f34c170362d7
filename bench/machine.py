"""The machine a benchmark ran on and the tool versions it used, for the JSON results."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from bench.kit.procs import run as run_command
from bench.procstat import cpu_model, mem_total_kib


def first_line(argv: Sequence[str]) -> str:
    """The first line `argv` prints (stdout, then stderr), or why it could not run."""
    try:
        result = run_command(argv, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else ""


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "mem_total_kib": mem_total_kib(),
        "python": sys.version.split()[0],
        "versions": {
            "nginx": first_line(["nginx", "-v"]),
            "wrk": first_line(["wrk", "-v"]),
            "docker-registry": first_line(["docker-registry", "--version"]),
            "containerd": first_line(["containerd", "--version"]),
            "trio": package_version("trio"),
            "httptools": package_version("httptools"),
            "trio-mirror": package_version("trio-mirror"),
        },
    }
