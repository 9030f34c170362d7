"""The local benchmark cluster: the kit's `LocalCluster` with its upstream behind a WAN link.

The upstream registry and the shaping relay live on 127.0.0.254, away from the
nodes (127.0.0.1..N). Images are pushed to the registry directly and named by
the relay's address, so every pull that reaches the upstream crosses the link
and is counted there. Each node's `hosts.toml` can be switched between the
mirror's configuration and a plain one (containerd straight to the upstream)
between phases, so both modes run on the same daemons in the same run.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path

from bench.kit.cluster import LocalCluster
from bench.kit.hosts import render_hosts_toml
from bench.kit.procs import KitError
from bench.kit.registry import UpstreamRegistry
from bench.kit.wan import LinkSpec, WanRelay

UPSTREAM_IP = "127.0.0.254"


class ShapedUpstream:
    """A registry plus the relay in front of it; `host`/`url` are the relay's, as nodes see it."""

    def __init__(self, base_dir: Path, link: LinkSpec, *, access_log: bool = False) -> None:
        self.registry = UpstreamRegistry(
            base_dir, ip=UPSTREAM_IP, access_log=access_log, log_level="info"
        )
        self.link = link
        self.relay: WanRelay | None = None

    @property
    def host(self) -> str:
        return self._relay().address

    @property
    def url(self) -> str:
        return self._relay().url

    @property
    def direct_host(self) -> str:
        """The registry itself, for pushing images without crossing the link."""
        return self.registry.host

    def _relay(self) -> WanRelay:
        if self.relay is None:
            raise KitError("the upstream is not started")
        return self.relay

    def start(self) -> None:
        self.registry.start()
        self.relay = WanRelay((self.registry.ip, self.registry.port), self.link, host=UPSTREAM_IP)
        self.relay.start()

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        self.registry.stop()

    def served_bytes(self) -> int:
        return self._relay().counters().down

    def blob_gets(self) -> list[tuple[str, int]]:
        """(digest, status) of every blob GET in the registry's access log (`access_log`)."""
        found = []
        for line in self.registry.process.log_path.read_text(errors="replace").splitlines():
            match = _BLOB_GET.search(line)
            if match:
                found.append((match.group(1), int(match.group(2))))
        return found


_BLOB_GET = re.compile(r'"GET /v2/[^ ]*/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" (\d{3})')


class BenchCluster(LocalCluster):
    def __init__(
        self,
        n: int,
        base_dir: Path | None,
        link: LinkSpec,
        *,
        mirror_args: Sequence[str] = (),
        log_level: str = "WARN",
        access_log: bool = False,
        containerd_series: str = "1.6",
        cri: bool = False,
    ) -> None:
        if n > 250:
            raise ValueError("at most 250 nodes: 127.0.0.254 is the upstream's")
        super().__init__(
            n,
            base_dir,
            mirror_args=mirror_args,
            log_level=log_level,
            containerd_series=containerd_series,
            cri=cri,
        )
        self.upstream: ShapedUpstream = ShapedUpstream(
            self.base_dir / "upstream", link, access_log=access_log
        )  # type: ignore[assignment]
        self.mode = "mirror"
        self._mirror_hosts: dict[int, str] = {}

    def start(self, timeout: float = 60.0) -> None:
        super().start(timeout)
        for node in self.nodes:
            self._mirror_hosts[node.index] = self._hosts_file(node.index).read_text()

    def _hosts_file(self, i: int) -> Path:
        return self.nodes[i].containerd.config_path / self.upstream.host / "hosts.toml"

    def set_mode(self, mode: str) -> None:
        """`mirror`: containerd asks its mirror first; `baseline`: straight to the upstream."""
        if mode not in ("mirror", "baseline"):
            raise ValueError(f"unknown mode {mode!r}")
        plain = render_hosts_toml(self.upstream.url)
        for node in self.nodes:
            text = self._mirror_hosts[node.index] if mode == "mirror" else plain
            self._hosts_file(node.index).write_text(text)
        self.mode = mode

    def remove_images(self, refs: Sequence[str]) -> None:
        """Remove images on every node; `--sync` waits for containerd's GC to drop the content."""
        for node in self.nodes:
            present = {name for name, _ in node.containerd.images()}
            for ref in refs:
                if ref in present:
                    with contextlib.suppress(KitError):
                        node.containerd.remove_image(ref)
