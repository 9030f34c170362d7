"""The experiment on a real cluster: per case, a new DaemonSet with v1, then an update to v2.

One run measures one mode: whatever the cluster runs (with or without the
mirror installed) is named by `--mode`; `analyze` puts two runs side by side,
as Spegel's tool does. Durations are the kubelet's own, from its `Pulled` events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.harness.cases import REPOSITORY, Case
from bench.harness.events import KubeletPull, kubelet_pulls, pulls_of
from bench.harness.kube import Kubectl, clear_images_daemonset, daemonset
from bench.harness.progress import PullProgress
from bench.harness.results import Pull, Run
from bench.harness.rollout import max_unavailable


@dataclass(frozen=True)
class KubePlan:
    registry: str  # host[:port] the images were pushed to with `generate --registry`
    mode: str
    repository: str = REPOSITORY
    max_unavailable: str = "20%"
    clear: bool = True
    helper_image: str = "docker.io/library/alpine:3.20"
    timeout: float = 1800.0

    def ref(self, case: Case, version: str) -> str:
        return f"{self.registry}/{self.repository}:{case.tag(version)}"


def daemonset_name(case: Case) -> str:
    return f"mirror-bench-{case.name.lower()}"


def to_pulls(
    found: Sequence[KubeletPull], case: Case, mode: str, phase: str, batch_size: int
) -> list[Pull]:
    """Kubelet pulls as records; batches follow the order the pulls happened in."""
    ordered = sorted(found, key=lambda p: p.timestamp)
    return [
        Pull(case.name, mode, phase, p.node or p.pod, i // batch_size, p.image, p.duration)
        for i, p in enumerate(ordered)
    ]


def measure_case(
    kubectl: Kubectl, run: Run, case: Case, plan: KubePlan, progress: PullProgress
) -> None:
    name = daemonset_name(case)
    v1, v2 = plan.ref(case, "v1"), plan.ref(case, "v2")
    if plan.clear:
        progress.doing(f"{case.name} clearing images on every node")
        clear = f"{name}-clear"
        kubectl.apply(clear_images_daemonset(clear, [v1, v2], plan.helper_image))
        kubectl.rollout_status(clear, plan.timeout)
        kubectl.delete_daemonset(clear)
    try:
        for phase, ref in (("create", v1), ("update", v2)):
            progress.doing(f"{case.name} {plan.mode} {phase}")
            kubectl.apply(daemonset(name, ref, max_unavailable=plan.max_unavailable))
            kubectl.rollout_status(name, plan.timeout)
        pulls = kubelet_pulls(kubectl.events())
    finally:
        kubectl.delete_daemonset(name)
    created = pulls_of(pulls, v1, f"{name}-")
    updated = pulls_of(pulls, v2, f"{name}-")
    batch = max_unavailable(plan.max_unavailable, max(len(created), 1))
    run.pulls += to_pulls(created, case, plan.mode, "create", len(created) or 1)
    run.pulls += to_pulls(updated, case, plan.mode, "update", batch)
    sizes = [p.size for p in (*created, *updated) if p.size]
    run.image_sizes[case.name] = max(sizes) if sizes else case.size
    run.settings.setdefault("nodes", len(created))
    run.settings.setdefault("first_update_batch", batch)
    progress.pulled(2)
    progress.log(
        f"{case.name} {plan.mode}: {len(created)} create pulls, {len(updated)} update pulls"
    )


def measure(kubectl: Kubectl, run: Run, cases: Sequence[Case], plan: KubePlan) -> Run:
    kubectl.ensure_namespace()
    with PullProgress(2 * len(cases), unit="phases") as progress:
        for case in cases:
            measure_case(kubectl, run, case, plan, progress)
    return run
