"""Two nodes, a tiny image, with and without the mirror: the relay counts the upstream's bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.harness.analyze import write_report
from bench.harness.cases import Case
from bench.harness.local_measure import Plan, measure
from bench.harness.localcluster import BenchCluster
from bench.harness.results import Run
from bench.harness.setup import push_pairs
from bench.kit.wan import LinkSpec

pytestmark = pytest.mark.integration
BINARIES = ("containerd", "ctr", "skopeo", "docker-registry")


def _served(run: Run, mode: str, phase: str, batch: int) -> int:
    (record,) = [u for u in run.upstream if (u.mode, u.phase, u.batch) == (mode, phase, batch)]
    return record.bytes


def test_mirror_vs_baseline_on_two_nodes(tmp_path: Path) -> None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"missing binaries: {', '.join(missing)}")
    case = Case.of("1MB", 2)
    run = Run("local", settings={"nodes": 2, "first_update_batch": 1})
    with BenchCluster(2, None, LinkSpec(rate=50e6, rtt=0.01)) as cluster:
        pairs = push_pairs(cluster, [case], tmp_path / "cache")
        measure(cluster, run, pairs, Plan(max_unavailable="50%", batch_gap=1.0))
    size = run.image_sizes[case.name]
    assert len(run.pulls) == 8
    assert {(p.mode, p.phase) for p in run.pulls} == {
        (m, ph) for m in ("mirror", "baseline") for ph in ("create", "update")
    }
    assert all(p.duration > 0 for p in run.pulls)
    # HTTP heads and the tag's HEAD come on top of the blobs, but not much.
    slack = 16 * 1024
    # Created at once on both nodes: without the mirror both fetch the image; with it,
    # each layer is fetched once (cold start) and only manifests come twice.
    assert 2 * size <= _served(run, "baseline", "create", 0) <= 2 * size + 2 * slack
    assert size <= _served(run, "mirror", "create", 0) <= size + 2 * slack
    for mode in ("mirror", "baseline"):
        assert size <= _served(run, mode, "update", 0) <= size + slack
    # Without the mirror the second node goes to the upstream; with it, to its peer.
    assert size <= _served(run, "baseline", "update", 1) <= size + slack
    assert _served(run, "mirror", "update", 1) == 0
    # Every batch's CPU was sampled; the mirrors worked when they were asked.
    assert len(run.cpu) == len(run.upstream) == 6
    assert all(c.wall > 0 and c.busy > 0 for c in run.cpu)
    assert sum(c.containerd for c in run.cpu) > 0
    (mirror_create,) = [c for c in run.cpu if (c.mode, c.phase) == ("mirror", "create")]
    assert mirror_create.mirror > 0
    files = write_report(run, tmp_path / "out")
    assert files["pull_times"].stat().st_size > 10_000
    assert "| 1MB x2 |" in files["markdown"].read_text()
    assert "| 1MB x2 | create | mirror |" in files["markdown"].read_text()
