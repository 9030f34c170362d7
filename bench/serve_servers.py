"""The three servers of `python -m bench serve`, serving one generated image.

A Distribution registry holds the image; a containerd fetches it; nginx serves
that containerd's content store on the `/v2/` paths and `mirror registry`
serves it through its API. `verify_all` checks every URL before anything is
measured.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.kit.containerd import ContainerdNode
from bench.kit.distribution import MANIFEST_ACCEPT
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.mirror import MirrorNode
from bench.kit.nginx import AliasLocation, NginxServer
from bench.kit.procs import ManagedProcess
from bench.kit.registry import UpstreamRegistry
from bench.measure import MIB
from bench.procstat import children
from bench.serve_plan import DISTRIBUTION, MIRROR, NGINX, Scenario, Target
from bench.wrk import WRK_DONE_SCRIPT

HOST = "127.0.0.1"


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


@dataclass
class Setup:
    image: GeneratedImage
    upstream: UpstreamRegistry
    node: ContainerdNode
    nginx: NginxServer
    mirror: MirrorNode

    def targets(self) -> dict[str, Target]:
        ns = f"?ns={self.upstream.host}"
        # Scanning /proc for nginx's workers every 50 ms would cost CPU the servers need.
        nginx_pids = _with_children(self.nginx.pid)
        return {
            NGINX: Target(NGINX, self.nginx.url, "", lambda: nginx_pids),
            DISTRIBUTION: Target(
                DISTRIBUTION, self.upstream.url, "", lambda: _pid(self.upstream.process)
            ),
            MIRROR: Target(MIRROR, self.mirror.url, ns, lambda: _pid(self.mirror.process)),
        }

    def commands(self) -> dict[str, Any]:
        """Every command line and configuration, for the JSON results."""
        return {
            "nginx": self.nginx.argv,
            "nginx_config": self.nginx.config_text(),
            "distribution": self.upstream.process.argv,
            "distribution_config": self.upstream.config_file.read_text(),
            "mirror": self.mirror.process.argv,
            "containerd": self.node.process.argv,
            "wrk_script": WRK_DONE_SCRIPT,
        }


def _pid(proc: ManagedProcess) -> list[int]:
    return [proc.pid] if proc.pid is not None else []


def _with_children(pid: int | None) -> list[int]:
    return [] if pid is None else [pid, *children(pid)]


def nginx_locations(blob_dir: Path) -> list[AliasLocation]:
    """The mirror's URL paths, mapped onto the content store's files."""
    digest = "sha256:([0-9a-f]{64})$"
    return [
        AliasLocation(f"^/v2/.+/blobs/{digest}", f"{blob_dir}/$1"),
        AliasLocation(
            f"^/v2/.+/manifests/{digest}",
            f"{blob_dir}/$1",
            "application/vnd.oci.image.manifest.v1+json",
        ),
    ]


@contextlib.contextmanager
def servers(base: Path, blob_mib: int, nginx_workers: int) -> Iterator[Setup]:
    with contextlib.ExitStack() as stack:
        step("starting the Distribution registry and containerd")
        upstream = stack.enter_context(UpstreamRegistry(base / "upstream", log_level="error"))
        node = stack.enter_context(ContainerdNode("node", base))
        step(f"generating a {blob_mib} MiB single-layer image")
        image = generate_image(
            base / "layout",
            name="bench/serve",
            tag="v1",
            seed=7,
            total_size=blob_mib * MIB,
            layers=1,
        )
        ref = image.ref(upstream.host)
        push_image(image.layout_dir, image.tag, ref)
        step(f"pushed {ref}; fetching it into containerd")
        write_hosts_toml(node.config_path, upstream.host, upstream.url)
        node.pull(ref, unpack=False)
        blob_dir = node.content_path / "blobs" / "sha256"
        nginx = NginxServer(
            base / "nginx", workers=nginx_workers, locations=nginx_locations(blob_dir)
        )
        stack.enter_context(nginx)
        step(f"nginx ({nginx_workers} worker(s)) at {nginx.url} serving {blob_dir}")
        mirror = MirrorNode(
            host=HOST,
            containerd_sock=node.address,
            workdir=base / "mirror",
            log_level="WARN",
        )
        stack.enter_context(mirror)
        step(f"mirror registry at {mirror.url} (pid {mirror.process.pid})")
        yield Setup(image, upstream, node, nginx, mirror)


def verify(target: Target, path: str, expected: str, accept: str | None) -> None:
    """GET once: status 200 and a body hashing to `expected`; warms every cache too."""
    host, port = target.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        sha = hashlib.sha256()
        while chunk := response.read(1 << 20):
            sha.update(chunk)
    finally:
        conn.close()
    got = f"sha256:{sha.hexdigest()}"
    if response.status != 200 or got != expected:
        raise RuntimeError(f"{target.key} GET {path} -> {response.status}, body {got}")


def verify_all(setup: Setup, plan: Sequence[Scenario]) -> None:
    targets = setup.targets()
    image = setup.image
    expected = {"blob": image.layers[0].digest, "manifest": image.digest, "tag": image.digest}
    for kind in ("blob", "manifest", "tag"):
        for key in sorted({s for sc in plan if sc.kind == kind for s in sc.servers}):
            accept = None if kind == "blob" else MANIFEST_ACCEPT
            verify(targets[key], targets[key].path(kind, image), expected[kind], accept)
    step("every server answers 200 with the right digest for every URL")
