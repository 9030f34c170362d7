"""The upstream registry: Debian's CNCF Distribution (`docker-registry`) over plain HTTP."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

from bench.kit.distribution import request
from bench.kit.procs import ManagedProcess, StartStop, free_port, wait_until


def render_config(
    *, data_dir: Path, addr: str, secret: str, access_log: bool, log_level: str
) -> str:
    return f"""\
version: 0.1
log:
  level: {log_level}
  formatter: text
  accesslog:
    disabled: {"false" if access_log else "true"}
storage:
  filesystem:
    rootdirectory: {data_dir}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: {secret}
"""


class UpstreamRegistry(StartStop):
    """A Distribution registry with filesystem storage under its own directory.

    `log_level` is one of error, warn, info, debug. Even at "error",
    Distribution logs every 404 (skopeo's HEAD checks before a push, misses).
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        ip: str = "127.0.0.1",
        port: int | None = None,
        access_log: bool = False,
        log_level: str = "warn",
        binary: str = "/usr/bin/docker-registry",
    ) -> None:
        if not ip.startswith("127."):
            raise ValueError(f"the kit binds loopback addresses only, not {ip}")
        self._own_dir = base_dir is None
        self.dir = Path(base_dir or tempfile.mkdtemp(prefix="registry-")).absolute()
        self.data_dir = self.dir / "data"
        self.config_file = self.dir / "config.yml"
        self.ip = ip
        self.port = port or free_port(ip)
        self.access_log = access_log
        self.log_level = log_level
        self.process = ManagedProcess(
            [binary, "serve", str(self.config_file)],
            log_path=self.dir / "registry.log",
            name=f"docker-registry[{self.host}]",
        )

    def __repr__(self) -> str:
        return f"<UpstreamRegistry {self.url} pid={self.pid}>"

    @property
    def host(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.alive()

    def tail(self, n: int = 40) -> str:
        return self.process.tail(n)

    def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            render_config(
                data_dir=self.data_dir,
                addr=self.host,
                secret=secrets.token_hex(16),
                access_log=self.access_log,
                log_level=self.log_level,
            )
        )
        self.process.start()
        try:
            wait_until(self._ready, timeout, what=f"GET {self.url}/v2/", proc=self.process)
        except BaseException:
            self.process.stop()
            raise

    def _ready(self) -> bool:
        try:
            return request(self.host, "GET", "/v2/", timeout=1.0).status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        self.process.stop(timeout)

    def cleanup(self) -> None:
        """Stop, and remove the directory if the registry created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    close = cleanup

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)
