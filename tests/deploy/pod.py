"""The chart's containers run under a real containerd with `ctr run`, as the kubelet would.

`ctr_run_spec` turns one container of the rendered DaemonSet into `ctr run`'s
flags and command line: the image's entrypoint then the container's args with
`$(VAR)` expanded from its env (the kubelet's rules), each hostPath volume
mounted from a directory of the test, the securityContext and the memory limit.
Whatever the translation does not know (a securityContext key, an env source, a
volume kind) fails it, so a chart change cannot slip past the test unseen.
`CtrContainer` runs it detached and removes it by its id: task killed and
deleted, container and snapshot deleted.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.kit.containerd import ContainerdNode
from bench.kit.procs import KitError

# Every capability Linux defines, for `capabilities.drop: [ALL]` (ctr wants names).
# fmt: off
ALL_CAPABILITIES = tuple(f"CAP_{name}" for name in (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE",
))
# fmt: on
_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def daemonset(rendered: Path, name: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all(rendered.read_text()):
        if doc and doc.get("kind") == "DaemonSet" and doc["metadata"]["name"] == name:
            return dict(doc)
    raise KeyError(f"no DaemonSet {name} in {rendered}")


def pod_container(pod_spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        if container["name"] == name:
            return dict(container)
    raise KeyError(f"no container {name}")


def memory_bytes(quantity: str) -> int:
    for suffix, factor in _UNITS.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


@dataclass(frozen=True)
class CtrRunSpec:
    argv: list[str]
    flags: list[str] = field(default_factory=list)


def _env(container: Mapping[str, Any], downward: Mapping[str, str]) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise KitError(f"env {item['name']}: source not translated: {item}")
    return env


def _security_flags(context: Mapping[str, Any]) -> list[str]:
    known = {"readOnlyRootFilesystem", "allowPrivilegeEscalation", "capabilities"}
    if set(context) - known:
        raise KitError(f"securityContext keys not translated: {sorted(set(context) - known)}")
    flags = ["--read-only"] if context.get("readOnlyRootFilesystem") else []
    if context.get("allowPrivilegeEscalation", True):
        flags.append("--allow-new-privs")  # ctr sets no_new_privs unless told otherwise
    capabilities = context.get("capabilities", {})
    if set(capabilities) - {"drop"} or capabilities.get("drop", ["ALL"]) != ["ALL"]:
        raise KitError(f"capabilities not translated: {capabilities}")
    if capabilities:
        flags += [f"--cap-drop={name}" for name in ALL_CAPABILITIES]
    return flags


def _check_secret_dir(secret: Mapping[str, Any], source: Path) -> None:
    """`source` stands in for the kubelet's directory of a secret: one file per item."""
    for item in secret.get("items", []):
        if not (source / item["path"]).is_file():
            raise KitError(
                f"{source / item['path']} (secret {secret['secretName']}) does not exist"
            )


def ctr_run_spec(
    container: Mapping[str, Any],
    volumes: Sequence[Mapping[str, Any]],
    *,
    entrypoint: Sequence[str],
    downward: Mapping[str, str],
    host_paths: Mapping[str, Path],
    replace_args: Mapping[str, str],
) -> CtrRunSpec:
    """`container` of a pod as `ctr run` would run it on this machine.

    `downward`: fieldPath -> value (`status.hostIP`); `host_paths`: volume name ->
    the directory or socket standing in for its hostPath, or the directory holding a
    secret's items as files (what the kubelet mounts); `replace_args`: expanded
    args that cannot be kept here (listen addresses bound to every interface, the
    node and host ports), each of which must occur.
    """
    env = _env(container, downward)
    args = [_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in container["args"]]
    missing = set(replace_args) - set(args)
    if missing:
        raise KitError(f"args to replace not found: {sorted(missing)} in {args}")
    argv = [*entrypoint, *(replace_args.get(a, a) for a in args)]
    flags = [f"--env={name}={value}" for name, value in env.items()]
    by_name = {volume["name"]: volume for volume in volumes}
    for mount in container.get("volumeMounts", []):
        volume = by_name[mount["name"]]
        source = host_paths[mount["name"]]
        if set(volume) == {"name", "hostPath"}:
            if not source.exists():
                raise KitError(f"{source} (for {volume['hostPath']['path']}) does not exist")
            mode = "ro" if mount.get("readOnly") else "rw"
        elif set(volume) == {"name", "secret"}:
            _check_secret_dir(volume["secret"], source)
            mode = "ro"  # the kubelet mounts a secret read-only, whatever the mount says
        else:
            raise KitError(
                f"volume {mount['name']}: only hostPath and secret volumes are translated"
            )
        flags.append(
            f"--mount=type=bind,src={source},dst={mount['mountPath']},options=rbind:{mode}"
        )
    flags += _security_flags(container.get("securityContext", {}))
    limit = container.get("resources", {}).get("limits", {}).get("memory")
    if limit:
        flags.append(f"--memory-limit={memory_bytes(limit)}")
    return CtrRunSpec(argv, flags)


class CtrContainer:
    """One container run detached by `ctr run` on a kit containerd, removed by its id.

    Its cgroup is its own (`/trio-mirror-test-<pid>-<id>`), so runc removes it
    with the task and nothing is left under /sys/fs/cgroup.
    """

    def __init__(
        self,
        node: ContainerdNode,
        image: str,
        container_id: str,
        spec: CtrRunSpec,
        *,
        log_path: Path,
        extra_flags: Sequence[str] = (),
    ) -> None:
        self.node = node
        self.image = image
        self.id = container_id
        self.spec = spec
        self.log_path = log_path
        self.extra_flags = list(extra_flags)
        self.cgroup = f"/trio-mirror-test-{os.getpid()}-{container_id}"
        self.created = False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.created = True
        self.node.ctr(
            "run",
            "--detach",
            "--net-host",
            f"--cgroup={self.cgroup}",
            f"--log-uri=file://{self.log_path}",
            *self.spec.flags,
            *self.extra_flags,
            self.image,
            self.id,
            *self.spec.argv,
            timeout=60,
        )

    def status(self) -> tuple[int, str] | None:
        """(pid, status) of the task from `ctr task ls`, None once there is none."""
        for line in self.node.ctr("task", "ls", timeout=30).stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == self.id:
                return int(fields[1]), fields[2]
        return None

    @property
    def pid(self) -> int:
        status = self.status()
        if status is None:
            raise KitError(f"container {self.id} has no task")
        return status[0]

    def wait_stopped(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status is None or status[1] == "STOPPED":
                return True
            time.sleep(0.1)
        return False

    def delete_task(self) -> int:
        """Delete the stopped task; returns its exit code (ctr exits with it)."""
        return self.node.ctr("task", "delete", self.id, check=False, timeout=30).returncode

    def run_to_end(self, timeout: float = 60.0) -> int:
        """Start, wait for the process to exit by itself, delete; returns its exit code."""
        self.start()
        if not self.wait_stopped(timeout):
            raise KitError(f"container {self.id} still running after {timeout}s:\n{self.log()}")
        code = self.delete_task()
        self.remove()
        return code

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the task deleted. Its exit code."""
        if self.status() is None:
            return None
        self.node.ctr("task", "kill", self.id, check=False, timeout=30)
        if not self.wait_stopped(timeout):
            self.node.ctr("task", "kill", "--signal=SIGKILL", self.id, check=False, timeout=30)
            self.wait_stopped(timeout)
        return self.delete_task()

    def remove(self) -> None:
        """Task (if any) and container deleted; the container's snapshot with it."""
        if not self.created:
            return
        self.stop()
        self.node.ctr("container", "delete", self.id, check=False, timeout=30)
        self.created = False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""
