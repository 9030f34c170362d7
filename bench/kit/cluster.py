"""A local cluster on this machine: one upstream registry, N containerd, N mirrors.

Node i listens on 127.0.0.(i+1); its containerd asks its own mirror first and
the upstream after, through a `hosts.toml` written by the real
`mirror configuration` command, exactly as the DaemonSet's init container does.
Mirrors bootstrap the DHT statically from the list of every node's router.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.kit.containerd import ContainerdNode
from bench.kit.mirror import MirrorNode
from bench.kit.procs import KitError, StartStop
from bench.kit.registry import UpstreamRegistry
from bench.kit.releases import containerd_release


@dataclass
class ClusterNode:
    index: int
    ip: str
    containerd: ContainerdNode
    mirror: MirrorNode

    @property
    def name(self) -> str:
        return f"node-{self.index + 1}"


def configure_containerd(
    node: ContainerdNode,
    registries: Sequence[str],
    targets: Sequence[str],
    basic_auth_dir: Path | None = None,
    *,
    resolve_tags: bool = True,
) -> None:
    """Run `mirror configuration` for this containerd's config_path (with the basic
    auth credentials in `basic_auth_dir`, or none: the default directory is Spegel's
    /etc/secrets/basic-auth, never this machine's business)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirror",
            "configuration",
            f"--containerd-registry-config-path={node.config_path}",
            f"--resolve-tags={'true' if resolve_tags else 'false'}",
            "--mirrored-registries",
            *registries,
            "--mirror-targets",
            *targets,
            f"--basic-auth-dir={basic_auth_dir or ''}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise KitError(f"mirror configuration failed: {result.stderr}")


class LocalCluster(StartStop):
    def __init__(
        self,
        n: int,
        base_dir: Path | None = None,
        *,
        mirror_args: Sequence[str] = (),
        keep: bool = False,
        log_level: str = "DEBUG",
        with_mirror: bool = True,
        containerd_series: str = "1.6",
        cri: bool = False,
        basic_auth_dir: Path | None = None,
        router_key: bool = True,
    ) -> None:
        """`containerd_series`: 1.6 (installed), 1.7 or 2.1 (see releases.py) on every
        node; `cri`: its CRI plugin on (the kubelet's pull path); `basic_auth_dir`: the
        `username` and `password` files every mirror requires and every hosts.toml sends;
        `router_key`: one cluster key shared by every node's DHT, as the chart and the
        unit deploy it."""
        if not 1 <= n <= 250:
            raise ValueError("a local cluster has 1 to 250 nodes")
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="cluster-")).absolute()
        self.keep = keep
        self.upstream = UpstreamRegistry(self.base_dir / "upstream")
        self.nodes: list[ClusterNode] = []
        self.with_mirror = with_mirror
        self.basic_auth_dir = basic_auth_dir
        self.containerd_series = containerd_series
        release = containerd_release(containerd_series)
        for i in range(n):
            ip = f"127.0.0.{i + 1}"
            containerd = ContainerdNode(
                f"node-{i + 1}",
                self.base_dir,
                containerd_binary=release.containerd,
                ctr_binary=release.ctr,
                cri=cri,
            )
            mirror = MirrorNode(
                host=ip,
                containerd_sock=containerd.address,
                workdir=self.base_dir / f"mirror-{i + 1}",
                log_level=log_level,
                name=f"mirror-{i + 1}",
                # A CRI node's config is what a DaemonSet's mirror would read.
                containerd_config_file=containerd.config_file if cri else "",
                extra_args=[
                    f"--basic-auth-dir={basic_auth_dir or ''}",
                    *(
                        [f"--containerd-registry-config-path={containerd.config_path}"]
                        if cri
                        else []
                    ),
                    *mirror_args,
                ],
            )
            self.nodes.append(ClusterNode(i, ip, containerd, mirror))
        # Every router is listed, as a DNS name of a headless Service resolves to every pod.
        routers = [f"{node.mirror.host}:{node.mirror.router_port}" for node in self.nodes]
        self.router_key = self.base_dir / "router.key" if router_key else None
        for node in self.nodes:
            if self.router_key is not None:
                node.mirror.process.argv.append(f"--router-key-file={self.router_key}")
            node.mirror.process.argv += [
                "--bootstrap-kind=static",
                "--static-bootstrap-peers",
                *routers,
            ]

    def __getitem__(self, i: int) -> ClusterNode:
        return self.nodes[i]

    def __len__(self) -> int:
        return len(self.nodes)

    def start(self, timeout: float = 60.0) -> None:
        self.upstream.start()
        for node in self.nodes:
            node.containerd.launch()
        for node in self.nodes:
            node.containerd.wait_ready()
            targets = [node.mirror.url] if self.with_mirror else []
            if targets:
                configure_containerd(
                    node.containerd, [self.upstream.url], targets, self.basic_auth_dir
                )
            else:
                from bench.kit.hosts import write_hosts_toml

                write_hosts_toml(node.containerd.config_path, self.upstream.host, self.upstream.url)
        if self.with_mirror:
            if self.router_key is not None and not self.router_key.exists():
                self.router_key.parent.mkdir(parents=True, exist_ok=True)
                self.router_key.write_text(secrets.token_hex(32) + "\n")
                self.router_key.chmod(0o600)
            for node in self.nodes:
                node.mirror.start(timeout, wait_ready=False)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                remaining = max(deadline - time.monotonic(), 1.0)
                node.mirror.start_wait_ready(remaining)

    def pull(self, i: int, ref: str, **kwargs: object):  # type: ignore[no-untyped-def]
        """`ctr pull` on node i; a failure carries the lines of its mirror's log that
        tell why (CI keeps no log files)."""
        try:
            return self.nodes[i].containerd.pull(ref, **kwargs)  # type: ignore[arg-type]
        except KitError as exc:
            trouble = self.nodes[i].mirror.trouble() if self.with_mirror else ""
            if not trouble:
                raise
            raise KitError(f"{exc}\n{self.nodes[i].mirror.name} log:\n{trouble}") from exc

    def stop(self) -> None:
        errors = []
        for node in self.nodes:
            for part in (node.mirror, node.containerd):
                try:
                    part.stop()
                # Deferred, not swallowed: the first error is raised once the rest are stopped.
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
        self.upstream.stop()
        if not self.keep and self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if errors:
            raise errors[0]
