"""containerd daemons side by side, each with its own root, state, sockets and hosts dir."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.kit.procs import KitError, ManagedProcess, StartStop, run, wait_for_unix_socket

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

# A unix socket path must fit in sockaddr_un.sun_path (108 bytes with the NUL).
MAX_SOCKET_PATH = 107

# Plugins that only log errors here (no btrfs/zfs/devmapper/aufs), CRI (off by
# design), and "opt", which would otherwise create /opt/containerd on the host.
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.opt",
)

DEFAULT_SNAPSHOTTER = "overlayfs"


@dataclass(frozen=True)
class PullResult:
    ref: str
    digest: str
    duration: float
    unpacked: bool
    output: str


def check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest


# With the CRI plugin on: NRI's socket is machine-wide (/var/run/nri), so
# daemons side by side would fight over it; the kit never runs containers.
CRI_DISABLED_PLUGINS = (
    *(p for p in DISABLED_PLUGINS if p != "io.containerd.grpc.v1.cri"),
    "io.containerd.nri.v1.nri",
)


def render_config(
    *,
    root: Path,
    state: Path,
    temp: Path,
    address: Path,
    ttrpc_address: Path,
    log_level: str,
    cri: bool = False,
    registry_config_path: Path | str | None = None,
    snapshotter: str = DEFAULT_SNAPSHOTTER,
    discard_unpacked_layers: bool = False,
    version: int = 2,
    use_local_image_pull: bool = False,
    layer_fetch_buffer: int = 0,
) -> str:
    """containerd's config.toml, schema `version` 2 (1.x; 2.x migrates it) or 3 (2.x).

    With `cri`, the CRI plugin stays on (it serves runtime.v1 on the main gRPC
    socket) and reads `registry_config_path` for `<host>/hosts.toml`; it starts
    without CNI, and image pulls do not need it. containerd 2.1 drops a version 2
    file's `discard_unpacked_layers` when it migrates the file: 2.x gets version 3.
    `registry_config_path` may be a ':'-separated list; `use_local_image_pull`
    (version 3) makes CRI pull without the transfer service. `layer_fetch_buffer`
    (2.1+) makes the transfer service fetch a layer in parallel ranges of that size.
    """
    disabled = ", ".join(f'"{p}"' for p in (CRI_DISABLED_PLUGINS if cri else DISABLED_PLUGINS))
    text = f"""\
version = {version}
root = "{root}"
state = "{state}"
temp = "{temp}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{ttrpc_address}"

[debug]
  level = "{log_level}"
"""
    if cri and version >= 3:
        text += f"""
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "{snapshotter}"
  discard_unpacked_layers = {"true" if discard_unpacked_layers else "false"}
  use_local_image_pull = {"true" if use_local_image_pull else "false"}
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "{registry_config_path or ""}"
"""
    elif cri:
        text += f"""
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "{snapshotter}"
  discard_unpacked_layers = {"true" if discard_unpacked_layers else "false"}
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{registry_config_path or ""}"
"""
    if layer_fetch_buffer:
        text += f"""
[plugins."io.containerd.transfer.v1.local"]
  max_concurrent_downloads = 4
  concurrent_layer_fetch_buffer = {layer_fetch_buffer}
"""
    return text


class ContainerdNode(StartStop):
    """One containerd daemon living entirely under `base_dir / name`."""

    def __init__(
        self,
        name: str,
        base_dir: Path,
        *,
        namespace: str = "k8s.io",
        snapshotter: str = DEFAULT_SNAPSHOTTER,
        log_level: str = "warn",
        containerd_binary: str = "containerd",
        ctr_binary: str = "ctr",
        cri: bool = False,
        discard_unpacked_layers: bool = False,
        extra_config_dirs: Sequence[Path] = (),
        use_local_image_pull: bool = False,
        layer_fetch_buffer: int = 0,
    ) -> None:
        """`cri` keeps the CRI plugin on, reading this node's hosts dir
        (`config_path`, followed by `extra_config_dirs` in a ':'-separated list);
        `discard_unpacked_layers` and `use_local_image_pull` (2.x) are its settings
        of those names; `layer_fetch_buffer` the transfer service's
        `concurrent_layer_fetch_buffer` (2.1+: parallel range fetches of a layer)."""
        self.name = name
        self.dir = Path(base_dir).absolute() / name
        self.root = self.dir / "root"
        self.state = self.dir / "state"
        self.temp = self.dir / "tmp"
        self.address = self.dir / "grpc.sock"
        self.ttrpc_address = self.dir / "ttrpc.sock"
        self.content_path = self.root / "io.containerd.content.v1.content"
        self.config_path = self.dir / "certs.d"
        self.config_file = self.dir / "config.toml"
        self.log_path = self.dir / "containerd.log"
        self.namespace = namespace
        self.snapshotter = snapshotter
        self.log_level = log_level
        self.ctr_binary = ctr_binary
        self.cri = cri
        self.discard_unpacked_layers = discard_unpacked_layers
        self.extra_config_dirs = tuple(Path(d) for d in extra_config_dirs)
        self.use_local_image_pull = use_local_image_pull
        self.layer_fetch_buffer = layer_fetch_buffer
        self._schema: int | None = None
        if len(str(self.ttrpc_address)) > MAX_SOCKET_PATH:
            raise KitError(f"socket path too long for AF_UNIX, use a shorter base dir: {self.dir}")
        self.process = ManagedProcess(
            [containerd_binary, "--config", str(self.config_file)],
            log_path=self.log_path,
            name=f"containerd[{name}]",
        )

    def __repr__(self) -> str:
        return f"<ContainerdNode {self.name} pid={self.pid} {self.address}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.alive()

    def tail(self, n: int = 40) -> str:
        return self.process.tail(n)

    def write_config(self) -> None:
        for d in (self.root, self.state, self.temp, self.config_path):
            d.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            render_config(
                root=self.root,
                state=self.state,
                temp=self.temp,
                address=self.address,
                ttrpc_address=self.ttrpc_address,
                log_level=self.log_level,
                cri=self.cri,
                registry_config_path=":".join(
                    str(d) for d in (self.config_path, *self.extra_config_dirs)
                ),
                snapshotter=self.snapshotter,
                discard_unpacked_layers=self.discard_unpacked_layers,
                use_local_image_pull=self.use_local_image_pull,
                layer_fetch_buffer=self.layer_fetch_buffer,
                version=self._config_version(),
            )
        )

    def _config_version(self) -> int:
        """3 for a CRI node on containerd 2.x (asked once), else 2."""
        if not self.cri:
            return 2
        if self._schema is None:
            out = run([self.process.argv[0], "--version"], check=True, timeout=30).stdout.split()
            major = out[2].lstrip("v").split(".")[0] if len(out) >= 3 else "1"
            self._schema = 3 if major.isdigit() and int(major) >= 2 else 2
        return self._schema

    def start(self, timeout: float = 20.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Write the config and start the daemon without waiting for it."""
        self.write_config()
        self._remove_sockets()
        self.process.start()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait for the gRPC socket; on failure stop the daemon and raise with its log."""
        try:
            wait_for_unix_socket(self.address, timeout, proc=self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        self.process.stop(timeout)
        # containerd 1.6 removes its gRPC socket on SIGTERM but not the ttrpc one.
        self._remove_sockets()

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def _remove_sockets(self) -> None:
        for sock in (self.address, self.ttrpc_address):
            sock.unlink(missing_ok=True)

    def ctr(
        self,
        *args: str,
        check: bool = True,
        timeout: float | None = 120.0,
        namespace: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [
                self.ctr_binary,
                "--address",
                str(self.address),
                "--namespace",
                namespace or self.namespace,
                *args,
            ],
            check=check,
            timeout=timeout,
        )

    def pull(
        self,
        ref: str,
        hosts_dir: Path | None = None,
        plain_http: bool = True,
        platform: str | None = None,
        all_platforms: bool = False,
        *,
        unpack: bool = True,
        timeout: float = 600.0,
    ) -> PullResult:
        """Pull `ref` with ctr; `unpack=False` fetches content and records the image only.

        `hosts_dir` defaults to this node's `config_path`.
        """
        args = ["images", "pull"] if unpack else ["content", "fetch"]
        args += ["--hosts-dir", str(hosts_dir or self.config_path)]
        if unpack:
            args += ["--snapshotter", self.snapshotter]
        if plain_http:
            args.append("--plain-http")
        if platform is not None:
            args += ["--platform", platform]
        if all_platforms:
            args.append("--all-platforms")
        started = time.perf_counter()
        result = self.ctr(*args, ref, timeout=timeout)
        duration = time.perf_counter() - started
        digest = dict(self.images()).get(ref)
        if digest is None:
            raise KitError(f"pull of {ref} on {self.name} finished but no image record exists")
        return PullResult(
            ref=ref,
            digest=digest,
            duration=duration,
            unpacked=unpack,
            # ctr redraws its progress table all along; the end is what matters.
            output=(result.stdout + result.stderr)[-8000:],
        )

    def start_pull(self, ref: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        """`ctr images pull` of `ref` through this node's `hosts.toml`, left running (for
        faults injected while it goes); its output to `log`, or discarded."""
        argv = [
            self.ctr_binary,
            "--address",
            str(self.address),
            "--namespace",
            self.namespace,
            "images",
            "pull",
            "--hosts-dir",
            str(self.config_path),
            "--plain-http",
            ref,
        ]
        if log is None:
            return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with log.open("wb") as sink:
            return subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)

    def images(self) -> list[tuple[str, str]]:
        """(name, target digest) of every image in the namespace."""
        out = self.ctr("images", "ls").stdout.splitlines()
        rows = []
        for line in out[1:]:
            fields = line.split()
            if len(fields) >= 3:
                rows.append((fields[0], fields[2]))
        return rows

    def remove_image(self, name: str) -> None:
        self.ctr("images", "rm", "--sync", name)

    def blob_path(self, digest: str) -> Path:
        return self.content_path / "blobs" / "sha256" / check_digest(digest).removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    @contextlib.contextmanager
    def snapshot_view(self, chain_id: str, name: str = "kit-view") -> Iterator[Path]:
        """The unpacked image whose top layer has `chain_id` (`PlatformImage.chain_id`),
        mounted read-only the way containerd mounts it for a container (needs root)."""
        snapshots = ("snapshots", "--snapshotter", self.snapshotter)
        # The mounts come with the view: nothing references a view, so containerd's
        # GC may remove it at once, while its committed parents stay with the image.
        (mount,) = json.loads(self.ctr(*snapshots, "view", "--mounts", name, chain_id).stdout)
        target = Path(tempfile.mkdtemp(prefix="view-", dir=self.dir))
        mounted = False
        try:
            options = ",".join(mount.get("Options") or ["ro"])
            argv = ["mount", "-t", mount["Type"], mount["Source"], str(target), "-o", options]
            run(argv, check=True, timeout=30)
            mounted = True
            yield target
        finally:
            if mounted:
                result = run(["umount", str(target)], check=False, timeout=30)
                if result.returncode != 0:
                    run(["umount", "-l", str(target)], check=False, timeout=30)
            target.rmdir()
            self.ctr(*snapshots, "rm", name, check=False)

    def blob_digests(self) -> set[str]:
        """Digests of every committed blob in the content store (read from disk)."""
        blob_dir = self.content_path / "blobs" / "sha256"
        if not blob_dir.is_dir():
            return set()
        return {f"sha256:{p.name}" for p in blob_dir.iterdir() if p.is_file()}


class ContainerdCluster(StartStop):
    """`n` containerd nodes named node-1..node-n; stopped and removed on exit."""

    def __init__(
        self,
        n: int,
        base_dir: Path | None = None,
        *,
        keep: bool = False,
        name_prefix: str = "node-",
        namespace: str = "k8s.io",
        snapshotter: str = DEFAULT_SNAPSHOTTER,
        log_level: str = "warn",
    ) -> None:
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="ctrd-")).absolute()
        self.keep = keep
        self.nodes = [
            ContainerdNode(
                f"{name_prefix}{i}",
                self.base_dir,
                namespace=namespace,
                snapshotter=snapshotter,
                log_level=log_level,
            )
            for i in range(1, n + 1)
        ]

    def start(self, timeout: float = 20.0) -> None:
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        errors: list[BaseException] = []
        for node in self.nodes:
            try:
                node.stop()
            # Deferred, not swallowed: the first error is raised once the rest are stopped.
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if not self.keep:
            target = [self.base_dir] if self._own_base else [n.dir for n in self.nodes]
            for d in target:
                shutil.rmtree(d, ignore_errors=True)
        if errors:
            raise errors[0]

    def __iter__(self) -> Iterator[ContainerdNode]:
        return iter(self.nodes)

    def __getitem__(self, i: int) -> ContainerdNode:
        return self.nodes[i]

    def __len__(self) -> int:
        return len(self.nodes)


@contextlib.contextmanager
def start_containerds(
    n: int,
    base_dir: Path | None = None,
    *,
    keep: bool = False,
    namespace: str = "k8s.io",
    snapshotter: str = DEFAULT_SNAPSHOTTER,
) -> Iterator[list[ContainerdNode]]:
    """Start `n` containerd nodes; yield them; stop and remove them on exit."""
    cluster = ContainerdCluster(
        n, base_dir, keep=keep, namespace=namespace, snapshotter=snapshotter
    )
    with cluster:
        yield cluster.nodes
