"""A real cluster through `kubectl`: the benchmark DaemonSets, as Spegel's tool deploys them.

Manifests are built as plain dicts (pure); `Kubectl` is a thin shell over the
`kubectl` binary with a fixed `--context` and namespace.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

LABEL = "app.kubernetes.io/name"
# Run on every node, tainted ones included, as a node-level benchmark should.
TOLERATE_ALL = [{"operator": "Exists"}]


def daemonset(name: str, image: str, *, max_unavailable: str = "20%") -> dict[str, Any]:
    """The benchmark DaemonSet: one pod per node running the image's `/pause`."""
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "labels": {LABEL: name}},
        "spec": {
            "selector": {"matchLabels": {LABEL: name}},
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": max_unavailable, "maxSurge": 0},
            },
            "template": {
                "metadata": {"labels": {LABEL: name}},
                "spec": {
                    "tolerations": TOLERATE_ALL,
                    # /pause has no SIGTERM handler: as PID 1 it ignores the signal.
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "benchmark",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}},
                        }
                    ],
                },
            },
        },
    }


def clear_images_daemonset(name: str, images: Sequence[str], helper_image: str) -> dict[str, Any]:
    """A privileged DaemonSet removing `images` from every node with crictl, then idling.

    Ready means done: the removal runs before the container starts idling.
    """
    remove = f"crictl rmi {' '.join(shlex.quote(i) for i in images)} || true"
    script = f"chroot /host /bin/sh -c {shlex.quote(remove)}; exec sleep infinity"
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "labels": {LABEL: name}},
        "spec": {
            "selector": {"matchLabels": {LABEL: name}},
            "template": {
                "metadata": {"labels": {LABEL: name}},
                "spec": {
                    "tolerations": TOLERATE_ALL,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "clear",
                            "image": helper_image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/sh", "-c", script],
                            "securityContext": {"privileged": True},
                            "volumeMounts": [{"name": "host", "mountPath": "/host"}],
                        }
                    ],
                    "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
                },
            },
        },
    }


Runner = Callable[..., subprocess.CompletedProcess[str]]


class KubectlError(RuntimeError):
    pass


class Kubectl:
    def __init__(
        self,
        context: str,
        namespace: str,
        *,
        binary: str = "kubectl",
        runner: Runner = subprocess.run,
    ) -> None:
        self.context = context
        self.namespace = namespace
        self.binary = binary
        self._runner = runner

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120.0) -> str:
        argv = [self.binary, "--context", self.context, "--namespace", self.namespace, *args]
        result = self._runner(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise KubectlError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        return result.stdout

    def ensure_namespace(self) -> None:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        self.apply(namespace)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", stdin=json.dumps(manifest))

    def rollout_status(self, daemonset: str, timeout: float) -> None:
        self.run(
            "rollout",
            "status",
            f"daemonset/{daemonset}",
            f"--timeout={int(timeout)}s",
            timeout=timeout + 30,
        )

    def delete_daemonset(self, name: str) -> None:
        self.run("delete", "daemonset", name, "--ignore-not-found", "--wait=true", timeout=300)

    def events(self) -> dict[str, Any]:
        return json.loads(self.run("get", "events", "-o", "json"))
