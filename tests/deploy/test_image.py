"""The image `make image` builds, run under containerd and runc as the chart's DaemonSet runs it.

Which program: $MIRROR_IMAGE_ONEDIR if set (a PyInstaller one-directory build);
else, with MIRROR_BUILD_BINARY=1 (CI sets it), one frozen fresh from
container/binary/mirror.spec (about 20-40 s on 2 cores); else build/onedir/mirror,
what `make image` leaves, when it exists; else the tests are skipped.

The image is packed into an OCI layout (container/image.py), pushed with skopeo
as `make image PUSH=...` does to a local Distribution registry, and pulled by
node 1's containerd. Then, from the rendered chart (container/helm/rendered/
default.yaml): the `configuration` init container writes node 1's hosts.toml and
the `registry` container serves node 1's content store, each with the chart's
args, env, hostPath mounts, read-only root, dropped capabilities and memory
limit, run by `ctr run --net-host` (what cannot be kept on a shared machine is
replaced: listen addresses on every interface become 127.0.0.2, the host and node
ports become the two mirrors' own; cluster DNS is a mounted /etc/hosts, as the
kubelet mounts one). Node 2 (a kit containerd and mirror) then pulls through it
with the upstream stopped: a generated image and the mirror's own image.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.kit.cluster import configure_containerd
from bench.kit.containerd import ContainerdNode
from bench.kit.images import GeneratedImage, generate_image, push_image
from bench.kit.metrics import metric_sum
from bench.kit.mirror import MirrorNode
from bench.kit.procs import free_port, pid_alive, wait_until
from bench.kit.registry import UpstreamRegistry
from container import image
from mirror.version import VERSION
from tests.deploy.conftest import KIT_BINARIES, ROOT, http_status, pyinstaller_build
from tests.deploy.pod import CtrContainer, CtrRunSpec, ctr_run_spec, daemonset, pod_container
from tests.httpclient import fetch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RENDERED = ROOT / "container" / "helm" / "rendered" / "default.yaml"
NODE_1, NODE_2 = "127.0.0.2", "127.0.0.3"
MIB = 1 << 20


@pytest.fixture(scope="module")
def onedir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("MIRROR_IMAGE_ONEDIR"):
        return Path(os.environ["MIRROR_IMAGE_ONEDIR"])
    if os.environ.get("MIRROR_BUILD_BINARY") == "1":
        return pyinstaller_build(tmp_path_factory.mktemp("onedir") / "dist", onedir=True)
    if (ROOT / "build" / "onedir" / "mirror" / "mirror").is_file():
        return ROOT / "build" / "onedir" / "mirror"
    pytest.skip("no build/onedir/mirror: run `make image` or set MIRROR_BUILD_BINARY=1")


def _udp_port_free_on_both(first: str, second: str) -> int:
    """One UDP port free on two addresses: the DNS bootstrap dials peers on its own port."""
    for _ in range(50):
        port = free_port(first)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((second, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no UDP port free on both {first} and {second}")


@dataclass
class Nodes:
    base: Path
    upstream: UpstreamRegistry
    layout: Path
    digest: str  # the mirror image's manifest
    ref: str  # the mirror image in the upstream
    app: GeneratedImage  # on node 1 only
    node_1: ContainerdNode
    registry: CtrContainer
    registry_address: str
    metrics_address: str
    node_2: ContainerdNode
    mirror_2: MirrorNode


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if f" {path}/" in line or f" {path} " in line]


def _cgroup_dirs(name: str) -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob(f"*{name}") if p.exists()]


@pytest.fixture(scope="module")
def nodes(onedir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    missing = [b for b in (*KIT_BINARIES, "runc") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"missing binaries: {', '.join(missing)}")
    base = tmp_path_factory.mktemp("image")
    layout = base / "layout"
    manifest = image.build(onedir, layout)
    config = json.loads(
        (layout / "blobs" / "sha256" / _config_hex(layout, manifest.hex)).read_text()
    )
    entrypoint = config["config"]["Entrypoint"]
    pod = daemonset(RENDERED, "spegel")["spec"]["template"]["spec"]
    with ExitStack() as stack:
        upstream = stack.enter_context(UpstreamRegistry(base / "upstream"))
        repository = f"{upstream.host}/trio-mirror/trio-mirror"
        pushed = image.push(layout, repository, tls_verify=False)
        assert pushed == manifest.digest
        ref = f"{repository}:{VERSION}"
        node_1 = stack.enter_context(ContainerdNode("node-1", base))
        # Runs once the containers are removed, before node 1's containerd stops.
        stack.callback(_assert_no_container_left, node_1)
        node_1.pull(ref)  # as the kubelet does before the pod starts: no hosts.toml yet
        app = generate_image(
            base / "app", name="team/app", tag="v1", seed=21, total_size=4 * MIB, layers=2
        )
        push_image(app.layout_dir, app.tag, app.ref(upstream.host))
        node_1.pull(app.ref(upstream.host))  # a workload that was there before the mirror
        node_2 = stack.enter_context(ContainerdNode("node-2", base))
        router = _udp_port_free_on_both(NODE_1, NODE_2)
        # The chart's Secret, as the kubelet mounts it; node 2's DHT shares the key.
        router_key = base / "router-key"
        router_key.mkdir()
        (router_key / "router.key").write_text(secrets.token_hex(32) + "\n")
        mirror_2 = MirrorNode(
            host=NODE_2,
            containerd_sock=node_2.address,
            workdir=base / "mirror-2",
            router_port=router,
            name="mirror-2",
            extra_args=[
                "--bootstrap-kind=static",
                "--static-bootstrap-peers",
                f"{NODE_1}:{router}",
                f"--router-key-file={router_key / 'router.key'}",
            ],
        )
        configure_containerd(node_2, [upstream.url], [mirror_2.url])

        registry_port, metrics_port = free_port(NODE_1), free_port(NODE_1)
        registry_address = f"{NODE_1}:{registry_port}"
        (base / "spegel-data").mkdir()
        host_paths = {
            "containerd-sock": node_1.address,
            "containerd-content": node_1.content_path,
            "containerd-config": node_1.config_path,
            "containerd-conf": node_1.dir,  # config.toml and certs.d, as /etc/containerd
            "spegel-data": base / "spegel-data",
            "router-key": router_key,
        }

        def spec(name: str, replace_args: dict[str, str]) -> CtrRunSpec:
            return ctr_run_spec(
                pod_container(pod, name),
                pod["volumes"],
                entrypoint=entrypoint,
                downward={"status.hostIP": NODE_1},
                host_paths=host_paths,
                replace_args=replace_args,
            )

        init_spec = spec(
            "configuration",
            {
                f"http://{NODE_1}:30020": f"http://{registry_address}",  # host port: this node
                f"http://{NODE_1}:30021": mirror_2.url,  # node port service: any node
            },
        )
        registry_spec = spec(
            "registry",
            {
                "--registry-addr=:5000": f"--registry-addr={registry_address}",
                "--router-addr=:5001": f"--router-addr={NODE_1}:{router}",
                "--metrics-addr=:9090": f"--metrics-addr={NODE_1}:{metrics_port}",
            },
        )
        registry_container = pod_container(pod, "registry")
        domain = next(
            a.split("=", 1)[1]
            for a in registry_container["args"]
            if a.startswith("--dns-bootstrap-domain=")
        )
        hosts = base / "hosts"
        hosts.write_text(f"{NODE_1} {domain}\n{NODE_2} {domain}\n")

        init = CtrContainer(
            node_1, ref, "configuration", init_spec, log_path=base / "configuration.log"
        )
        stack.callback(init.remove)
        code = init.run_to_end()
        assert code == 0, init.log()

        mirror_2.start(wait_ready=False)
        stack.callback(mirror_2.stop)
        registry = CtrContainer(
            node_1,
            ref,
            "registry",
            registry_spec,
            log_path=base / "registry.log",
            extra_flags=[f"--mount=type=bind,src={hosts},dst=/etc/hosts,options=rbind:ro"],
        )
        stack.callback(registry.remove)
        registry.start()
        try:
            wait_until(
                lambda: http_status(f"http://{registry_address}/readyz") == 200,
                60,
                what="the registry container's /readyz",
            )
        except Exception as exc:
            raise AssertionError(f"{exc}\nregistry log:\n{registry.log()}") from exc
        mirror_2.start_wait_ready(60)
        pid = registry.pid
        yield Nodes(
            base=base,
            upstream=upstream,
            layout=layout,
            digest=manifest.digest,
            ref=ref,
            app=app,
            node_1=node_1,
            registry=registry,
            registry_address=registry_address,
            metrics_address=f"{NODE_1}:{metrics_port}",
            node_2=node_2,
            mirror_2=mirror_2,
        )
        # A pod deleted: SIGTERM to PID 1, which ends cleanly.
        code = registry.stop()
        assert code == 0, registry.log()
        assert not pid_alive(pid)
    # Nothing left: no container, task, snapshot mount or cgroup of this test.
    assert _mounts_under(base) == []
    assert _cgroup_dirs(registry.cgroup) == []


def _assert_no_container_left(node: ContainerdNode) -> None:
    assert node.ctr("containers", "ls", "--quiet").stdout.split() == []
    assert node.ctr("tasks", "ls").stdout.splitlines()[1:] == []
    snapshots = node.ctr("snapshots", "ls").stdout.splitlines()[1:]
    assert [line for line in snapshots if "Active" in line] == []  # no container's rw layer


def _config_hex(layout: Path, manifest_hex: str) -> str:
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_hex).read_text())
    return str(manifest["config"]["digest"]).removeprefix("sha256:")


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_configuration_writes_hosts_toml_for_every_registry(nodes: Nodes) -> None:
    # No mirrored registries (the chart's default): `_default`, this node's instance first.
    text = (nodes.node_1.config_path / "_default" / "hosts.toml").read_text()
    ours, service = (
        text.index(f"[host.'http://{nodes.registry_address}']"),
        text.index(f"[host.'{nodes.mirror_2.url}']"),
    )
    assert ours < service


def test_registry_runs_as_the_chart_says(nodes: Nodes) -> None:
    pid = nodes.registry.pid
    status = _proc_status(pid)
    assert status["Uid"].split() == ["0"] * 4  # the image's user, as Spegel's: root...
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, capabilities  # ...with no capability
    assert status["NoNewPrivs"] == "1"  # allowPrivilegeEscalation: false
    root = next(
        line.split()
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    assert "ro" in root[5].split(",")  # readOnlyRootFilesystem
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in cmdline] == nodes.registry.spec.argv
    assert cmdline[0] == b"/opt/trio-mirror/mirror" and cmdline[1] == b"registry"
    limit = Path(f"/sys/fs/cgroup/memory{nodes.registry.cgroup}/memory.limit_in_bytes")
    assert int(limit.read_text()) == 256 * MIB  # resources.limits.memory
    assert http_status(f"http://{nodes.metrics_address}/metrics") == 200


def _wait_served_by(nodes: Nodes, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        reply = fetch(nodes.mirror_2.address, path, method="HEAD")
        if reply.status == 200 and reply.header("X-Mirror-Peer") == nodes.registry_address:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not served by the containerised node in {timeout}s")
        time.sleep(0.2)


def _assert_blobs_match(node: ContainerdNode, digests: list[str]) -> None:
    for digest in digests:
        path = node.blob_path(digest)
        assert path.is_file(), f"{digest} missing on {node.name}"
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _layer_sizes(nodes: Nodes) -> int:
    manifest = json.loads(
        (nodes.layout / "blobs" / "sha256" / nodes.digest.removeprefix("sha256:")).read_text()
    )
    return sum(int(layer["size"]) for layer in manifest["layers"])


def _mirror_image_blobs(nodes: Nodes) -> list[str]:
    manifest = json.loads(
        (nodes.layout / "blobs" / "sha256" / nodes.digest.removeprefix("sha256:")).read_text()
    )
    return [
        nodes.digest,
        manifest["config"]["digest"],
        *(layer["digest"] for layer in manifest["layers"]),
    ]


def test_another_node_pulls_through_the_containerised_node(nodes: Nodes) -> None:
    app = nodes.app
    ns = f"?ns={nodes.upstream.host}"
    name = "trio-mirror/trio-mirror"
    mirror_blobs = _mirror_image_blobs(nodes)
    for digest in mirror_blobs:
        section = "manifests" if digest == nodes.digest else "blobs"
        _wait_served_by(nodes, f"/v2/{name}/{section}/{digest}{ns}")
    for blob in app.images[0].blobs():
        section = "manifests" if blob.digest == app.digest else "blobs"
        _wait_served_by(nodes, f"/v2/{app.name}/{section}/{blob.digest}{ns}")
    metrics_url = f"http://{nodes.metrics_address}"
    served = metric_sum(metrics_url, "mirror_served_bytes_total", source="local")
    nodes.upstream.stop()
    try:
        nodes.node_2.pull(app.ref(nodes.upstream.host))
        _assert_blobs_match(nodes.node_2, [b.digest for b in app.images[0].blobs()])
        # The mirror's own image, as a DaemonSet rollout pulls it node after node.
        nodes.node_2.pull(nodes.ref)
        _assert_blobs_match(nodes.node_2, mirror_blobs)
    finally:
        nodes.upstream.start()
    layers = sum(layer.size for layer in app.layers) + _layer_sizes(nodes)
    assert metric_sum(metrics_url, "mirror_served_bytes_total", source="local") >= (served + layers)


def test_a_new_image_pulled_through_the_charts_hosts_toml(nodes: Nodes) -> None:
    fresh = generate_image(
        nodes.base / "fresh", name="team/fresh", tag="v1", seed=22, total_size=2 * MIB, layers=1
    )
    ref = fresh.ref(nodes.upstream.host)
    push_image(fresh.layout_dir, fresh.tag, ref)
    # Node 1's containerd through the hosts.toml the init container wrote: its own
    # (containerised) mirror first, the node port service next, then the upstream.
    metrics_url = f"http://{nodes.metrics_address}"
    misses = metric_sum(metrics_url, "spegel_mirror_requests_total", cache="miss")
    # A second or two when it works; stalled, it fails after 40 s (10 s a try): 20 s.
    nodes.node_1.pull(ref, timeout=20)
    assert metric_sum(metrics_url, "spegel_mirror_requests_total", cache="miss") > misses
    _assert_blobs_match(nodes.node_1, [b.digest for b in fresh.images[0].blobs()])
