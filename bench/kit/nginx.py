"""nginx as a reference file server: its own config, prefix and pid file, in the foreground.

`daemon off;` keeps the master process the child the kit recorded, so it is stopped
by its pid like every other kit process; the workers exit with their master.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.kit.procs import ManagedProcess, StartStop, free_port, run, wait_for_tcp


@dataclass(frozen=True)
class AliasLocation:
    """A regex `location` whose file is `alias` with the regex's captures (`$1`) filled in."""

    regex: str
    alias: str
    content_type: str = "application/octet-stream"

    def render(self) -> str:
        return (
            f'        location ~ "{self.regex}" {{\n'
            f"            alias {self.alias};\n"
            f"            default_type {self.content_type};\n"
            f"        }}\n"
        )


def render_config(
    *,
    prefix: Path,
    listen: str,
    workers: int,
    locations: Sequence[AliasLocation],
    root: Path | None,
) -> str:
    temp = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp_paths = "".join(f"    {t}_temp_path {prefix / 'tmp' / t};\n" for t in temp)
    root_line = f"        root {root};\n" if root is not None else ""
    return f"""\
daemon off;
master_process on;
user root;
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    # The default (1000) would reconnect every 1000 requests; the other servers never do.
    keepalive_requests 1000000;
    types {{}}
    default_type application/octet-stream;
{temp_paths}
    server {{
        listen {listen};
{root_line}{"".join(loc.render() for loc in locations)}    }}
}}
"""


class NginxServer(StartStop):
    """One nginx master (+ `workers` workers) serving files under `base_dir`'s config."""

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        ip: str = "127.0.0.1",
        port: int | None = None,
        workers: int = 1,
        locations: Sequence[AliasLocation] = (),
        root: Path | None = None,
        binary: str = "/usr/sbin/nginx",
    ) -> None:
        if not ip.startswith("127."):
            raise ValueError(f"the kit binds loopback addresses only, not {ip}")
        if workers < 1:
            raise ValueError("nginx needs at least one worker")
        self._own_dir = base_dir is None
        self.dir = Path(base_dir or tempfile.mkdtemp(prefix="nginx-")).absolute()
        self.config_file = self.dir / "nginx.conf"
        self.ip = ip
        self.port = port or free_port(ip)
        self.workers = workers
        self.locations = tuple(locations)
        self.root = root
        self.binary = binary
        self.argv = [binary, "-p", str(self.dir), "-c", str(self.config_file)]
        # -e: the error log before the config is read; nginx's built-in default is /var/log.
        self.argv += ["-e", str(self.dir / "error.log")]
        self.process = ManagedProcess(
            self.argv, log_path=self.dir / "nginx.out", name=f"nginx[{ip}:{self.port}]"
        )

    def __repr__(self) -> str:
        return f"<NginxServer {self.url} pid={self.pid} workers={self.workers}>"

    @property
    def host(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def config_text(self) -> str:
        return render_config(
            prefix=self.dir,
            listen=self.host,
            workers=self.workers,
            locations=self.locations,
            root=self.root,
        )

    def version(self) -> str:
        # `nginx -v` prints to stderr.
        return run([self.binary, "-v"]).stderr.strip().removeprefix("nginx version: ")

    def start(self, timeout: float = 10.0) -> None:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config_text())
        run([*self.argv, "-t", "-q"])
        self.process.start()
        try:
            wait_for_tcp(self.ip, self.port, timeout, proc=self.process)
        except BaseException:
            self.process.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        # SIGTERM is nginx's fast shutdown: workers are told to exit and reaped by the master.
        self.process.stop(timeout)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
