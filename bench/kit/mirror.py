"""A `mirror registry` node as a child process, for tests, the demo and benchmarks."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bench.kit.procs import ManagedProcess, StartStop, free_port, wait_until


class MirrorNode(StartStop):
    """One `python -m mirror registry` bound to `host`, reading one containerd."""

    def __init__(
        self,
        *,
        host: str,
        containerd_sock: Path,
        workdir: Path,
        registry_port: int | None = None,
        router_port: int | None = None,
        metrics_port: int | None = None,
        namespace: str = "k8s.io",
        content_path: Path | str = "",
        containerd_config_file: Path | str = "",
        extra_args: Sequence[str] = (),
        log_level: str = "DEBUG",
        name: str | None = None,
        nofile: int | None = None,
    ) -> None:
        self.host = host
        # Unset ports are free ones, so several nodes can share a host address.
        self.registry_port = registry_port or free_port(host)
        self.router_port = router_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.workdir = Path(workdir)
        self.name = name or f"mirror-{host}"
        # `nofile`: the process's RLIMIT_NOFILE (soft and hard), set by util-linux's
        # prlimit, which then execs the mirror: the pid is the mirror's.
        limit = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile else []
        argv = [
            *limit,
            sys.executable,
            "-m",
            "mirror",
            "registry",
            f"--log-level={log_level}",
            f"--registry-addr={host}:{self.registry_port}",
            f"--router-addr={host}:{self.router_port}",
            f"--metrics-addr={host}:{self.metrics_port}",
            f"--containerd-sock={containerd_sock}",
            f"--containerd-namespace={namespace}",
            f"--containerd-content-path={content_path}",
            # The node's own containerd config, for the startup warnings; empty: no check
            # (the default would read the machine's /etc/containerd/config.toml).
            f"--containerd-config-file={containerd_config_file}",
            f"--data-dir={self.workdir / 'data'}",
            # On its own unless told otherwise (LocalCluster adds every node's router).
            "--bootstrap-kind=static",
            *extra_args,
        ]
        self.process = ManagedProcess(argv, log_path=self.workdir / "mirror.log", name=self.name)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.registry_port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.registry_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    def _answers(self, path: str, expect: int = 200, *, base: str | None = None) -> bool:
        try:
            with urllib.request.urlopen((base or self.url) + path, timeout=1.0) as response:
                return response.status == expect
        except OSError:
            return False

    def start(self, timeout: float = 30.0, *, wait_ready: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        path = "/readyz" if wait_ready else "/livez"
        wait_until(
            lambda: self._answers(path), timeout, what=f"{self.name} {path}", proc=self.process
        )
        # The metrics front end starts right after the registry port.
        wait_until(
            lambda: self._answers("/metrics", base=self.metrics_url),
            timeout,
            what=f"{self.name} /metrics",
            proc=self.process,
        )

    def start_wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until an already started node answers `/readyz` with 200."""
        wait_until(
            lambda: self._answers("/readyz"),
            timeout,
            what=f"{self.name} /readyz",
            proc=self.process,
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.process.stop(timeout)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def tail(self, n: int = 40) -> str:
        return self.process.tail(n)

    def trouble(self, n: int = 30) -> str:
        """The last `n` log lines that say why a pull went wrong: warnings, errors,
        requests that no peer served, cold-start decisions."""
        try:
            lines = self.process.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        marks = (
            '"level": "WARN',  # WARN, as the mirror's JSON log names it
            '"level": "ERROR"',
            '"outcome": "miss"',
            '"outcome": "failed"',
            '"no peer answered"',
            "claim",
        )
        picked = [line for line in lines if any(mark in line for mark in marks)]
        return "\n".join(picked[-n:])
