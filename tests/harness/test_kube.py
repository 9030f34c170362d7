"""The real-cluster path against recorded events: manifests, kubectl calls, records."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.harness.cases import Case
from bench.harness.kube import Kubectl, KubectlError, clear_images_daemonset, daemonset
from bench.harness.kube_measure import KubePlan, measure_case
from bench.harness.progress import PullProgress
from bench.harness.results import Run

FIXTURES = Path(__file__).parent / "fixtures"


def test_benchmark_daemonset_rolls_20_percent_at_a_time() -> None:
    manifest = daemonset("mirror-bench-10mb-1", "reg/benchmark:v1-10MB-1")
    spec = manifest["spec"]
    assert spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "20%"
    pod = spec["template"]["spec"]
    assert pod["containers"][0]["image"] == "reg/benchmark:v1-10MB-1"
    assert pod["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    assert pod["tolerations"] == [{"operator": "Exists"}]


def test_clear_daemonset_removes_the_images_on_the_host() -> None:
    manifest = clear_images_daemonset("clear", ["a/b:v1", "a/b:v2"], "alpine:3.20")
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    script = container["command"][-1]
    assert "crictl rmi a/b:v1 a/b:v2" in script and script.startswith("chroot /host")
    assert container["securityContext"] == {"privileged": True}


class Recorder:
    def __init__(self, events: dict[str, Any]) -> None:
        self.calls: list[list[str]] = []
        self.inputs: list[Any] = []
        self.events = events

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        self.inputs.append(json.loads(kwargs["input"]) if kwargs.get("input") else None)
        out = json.dumps(self.events) if argv[5:7] == ["get", "events"] else ""
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_measure_case_on_recorded_events() -> None:
    recorder = Recorder(json.loads((FIXTURES / "events-10MB-1.json").read_text()))
    kubectl = Kubectl("aks-bench", "mirror-benchmark", runner=recorder)
    plan = KubePlan(registry="registry.example.com:5000", mode="mirror")
    run = Run("kubernetes")
    with PullProgress(2, unit="phases") as progress:
        measure_case(kubectl, run, Case.parse("10MB-1"), plan, progress)
    verbs = [argv[5:7] for argv in recorder.calls]
    assert verbs == [
        ["apply", "-f"],  # clear images
        ["rollout", "status"],
        ["delete", "daemonset"],
        ["apply", "-f"],  # v1
        ["rollout", "status"],
        ["apply", "-f"],  # v2
        ["rollout", "status"],
        ["get", "events"],
        ["delete", "daemonset"],
    ]
    assert all(
        argv[1:5] == ["--context", "aks-bench", "--namespace", "mirror-benchmark"]
        for argv in recorder.calls
    )
    images = [i["spec"]["template"]["spec"]["containers"][0]["image"] for i in recorder.inputs if i]
    assert images[1:] == [
        "registry.example.com:5000/benchmark:v1-10MB-1",
        "registry.example.com:5000/benchmark:v2-10MB-1",
    ]
    create = [p for p in run.pulls if p.phase == "create"]
    update = [p for p in run.pulls if p.phase == "update"]
    assert len(create) == 5 and {p.batch for p in create} == {0}
    assert [p.batch for p in update] == [0, 1, 2, 3, 4]
    assert [p.duration for p in update] == pytest.approx([1.312, 0.204, 0.1875, 0.231, 0.176])
    assert {p.mode for p in run.pulls} == {"mirror"}
    assert run.image_sizes == {"10MB-1": 10498633}
    assert run.settings == {"nodes": 5, "first_update_batch": 1}


def test_kubectl_failure_says_what_failed() -> None:
    def failing(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", 'error: context "nope" does not exist')

    with pytest.raises(KubectlError, match="does not exist"):
        Kubectl("nope", "ns", runner=failing).events()
