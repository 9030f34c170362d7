"""The experiment on the local cluster: per case and mode, a create phase then an update phase.

For each image pair, the mirror mode runs first and the baseline second, on the
same daemons: the baseline never asks a mirror, so what the mirrors still
remember of the first mode cannot touch it, and the next case's images share
nothing with this one's. Images are removed from every node between modes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.harness.cases import Case
from bench.harness.cpu import sample, spent
from bench.harness.images import BenchImage
from bench.harness.localcluster import BenchCluster
from bench.harness.progress import PullProgress
from bench.harness.report import phase_cpu
from bench.harness.results import Pull, Run, Upstream
from bench.harness.rollout import create_batches, update_batches
from bench.harness.stats import describe

MODE_ORDER = ("mirror", "baseline")


@dataclass(frozen=True)
class Plan:
    max_unavailable: str = "20%"
    # Time between one batch's last pull and the next batch's first: on a real
    # cluster, pod start, readiness and the old pod's termination take seconds.
    batch_gap: float = 1.0
    modes: Sequence[str] = MODE_ORDER


def pull_together(cluster: BenchCluster, nodes: Sequence[int], ref: str) -> dict[int, float]:
    """Start the pulls of `ref` on `nodes` at once; seconds per node."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = {i: pool.submit(cluster.pull, i, ref) for i in nodes}
        return {i: future.result().duration for i, future in futures.items()}


def run_phase(
    cluster: BenchCluster,
    run: Run,
    *,
    case: Case,
    phase: str,
    image: BenchImage,
    batches: list[list[int]],
    gap: float,
    progress: PullProgress,
) -> None:
    ref = image.ref(cluster.upstream.host)
    containerds = [node.containerd.pid for node in cluster.nodes]
    mirrors = [node.mirror.process.pid for node in cluster.nodes]
    for number, batch in enumerate(batches):
        if number:
            time.sleep(gap)
        progress.doing(f"{case.name} {cluster.mode} {phase} {number + 1}/{len(batches)}")
        before = cluster.upstream.served_bytes()
        cpu_before = sample(containerds, mirrors)
        durations = pull_together(cluster, batch, ref)
        cpu = spent(
            cpu_before,
            sample(containerds, mirrors),
            case=case.name,
            mode=cluster.mode,
            phase=phase,
            batch=number,
        )
        run.cpu.append(cpu)
        served = cluster.upstream.served_bytes() - before
        run.upstream.append(Upstream(case.name, cluster.mode, phase, number, served))
        for i, seconds in durations.items():
            run.pulls.append(
                Pull(case.name, cluster.mode, phase, cluster[i].name, number, ref, seconds)
            )
        progress.pulled(len(batch))


def phase_line(run: Run, case: Case, mode: str, phase: str, image_size: int) -> str:
    times = [p.duration for p in run.pulls if (p.case, p.mode, p.phase) == (case.name, mode, phase)]
    served = sum(
        u.bytes for u in run.upstream if (u.case, u.mode, u.phase) == (case.name, mode, phase)
    )
    stats = describe(times)
    cpu = phase_cpu(run, case.name, mode, phase)
    return (
        f"{case.name:>8} {mode:<8} {phase:<6} avg {stats.mean:6.2f}s  p50 {stats.p50:6.2f}s"
        f"  max {stats.max:6.2f}s  upstream {served / image_size:4.1f}x"
        + ("" if cpu is None else f"  {cpu.line()}")
    )


def measure_case(
    cluster: BenchCluster,
    run: Run,
    case: Case,
    pair: tuple[BenchImage, BenchImage],
    plan: Plan,
    progress: PullProgress,
) -> None:
    v1, v2 = pair
    nodes = list(range(len(cluster)))
    run.image_sizes[case.name] = v1.size
    for mode in plan.modes:
        cluster.set_mode(mode)
        phases = (
            ("create", v1, create_batches(nodes)),
            ("update", v2, update_batches(nodes, plan.max_unavailable)),
        )
        for phase, image, batches in phases:
            run_phase(
                cluster,
                run,
                case=case,
                phase=phase,
                image=image,
                batches=batches,
                gap=plan.batch_gap,
                progress=progress,
            )
            progress.log(phase_line(run, case, mode, phase, v1.size))
            time.sleep(plan.batch_gap)
        progress.doing(f"{case.name} {mode} removing images")
        cluster.remove_images([v1.ref(cluster.upstream.host), v2.ref(cluster.upstream.host)])
        time.sleep(plan.batch_gap)


def measure(
    cluster: BenchCluster,
    run: Run,
    pairs: dict[Case, tuple[BenchImage, BenchImage]],
    plan: Plan,
    progress_factory: Callable[[int], PullProgress] = PullProgress,
) -> Run:
    total = len(pairs) * len(plan.modes) * 2 * len(cluster)
    with progress_factory(total) as progress:
        for case, pair in pairs.items():
            measure_case(cluster, run, case, pair, plan, progress)
    return run
