"""Create-phase p50 against node count: points, targets, table and chart from hand-made runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.harness import analyze_cmd, scaling
from bench.harness.results import Cpu, Pull, Run, Upstream

SIZE = 100 * 2**20


def _run(nodes: int, baseline: float, mirror: float) -> Run:
    """`nodes` nodes each pulled in `baseline` s without the mirror, `mirror` s with it."""
    run = Run("local", settings={"nodes": nodes})
    run.image_sizes["100MB-4"] = SIZE
    for mode, seconds in (("baseline", baseline), ("mirror", mirror)):
        for i in range(nodes):
            run.pulls.append(
                Pull("100MB-4", mode, "create", f"node-{i}", 0, "r", seconds + i / 100)
            )
        served = nodes * SIZE if mode == "baseline" else SIZE
        run.upstream.append(Upstream("100MB-4", mode, "create", 0, served))
        # The machine's 2 cores: busy 1.8 of 2 CPU seconds per second with the mirror.
        wall = mirror if mode == "mirror" else baseline
        run.cpu.append(Cpu("100MB-4", mode, "create", 0, wall, 2, 1.8 * wall, 0.0, 0.0, 0.0))
    # An update phase is not part of the scaling.
    run.pulls.append(Pull("100MB-4", "mirror", "update", "node-0", 0, "r", 99.0))
    return run


def test_points_are_the_create_p50s_by_node_count() -> None:
    found = scaling.points([_run(20, 110.0, 30.0), _run(5, 28.0, 8.0)])
    assert [(p.nodes, p.case) for p in found] == [(5, "100MB-4"), (20, "100MB-4")]
    five = found[0]
    assert five.baseline_p50 == pytest.approx(28.02)
    assert five.mirror_p50 == pytest.approx(8.02)
    assert five.upstream == {"baseline": pytest.approx(5.0), "mirror": pytest.approx(1.0)}


def test_the_mirror_growing_past_1_3x_fails_its_target() -> None:
    grew, baseline_grew = scaling.checks(
        scaling.points([_run(5, 28.0, 8.0), _run(20, 110.0, 30.0)])
    )
    assert grew.value == pytest.approx(30.095 / 8.02, rel=1e-3)
    assert not grew.passed
    assert baseline_grew.passed  # 3.9x for 4x the nodes
    flat = scaling.checks(scaling.points([_run(5, 28.0, 8.0), _run(20, 110.0, 9.0)]))
    assert flat[0].passed


def test_a_baseline_that_does_not_grow_fails() -> None:
    _, baseline_grew = scaling.checks(scaling.points([_run(5, 28.0, 8.0), _run(20, 30.0, 8.0)]))
    assert not baseline_grew.passed


def test_one_node_count_has_no_growth_to_check() -> None:
    assert scaling.checks(scaling.points([_run(5, 28.0, 8.0)])) == []


def test_a_run_without_its_node_count_is_refused() -> None:
    run = _run(5, 28.0, 8.0)
    run.settings.clear()
    with pytest.raises(ValueError, match=r"settings\.nodes"):
        scaling.points([run])


def test_analyze_by_nodes_writes_the_table_and_chart(tmp_path: Path) -> None:
    files = []
    for nodes, baseline, mirror in ((5, 28.0, 8.0), (10, 56.0, 9.0), (20, 110.0, 10.0)):
        path = tmp_path / f"n{nodes}.json"
        _run(nodes, baseline, mirror).save(path)
        files.append(path)
    args = argparse.Namespace(results=files, out=tmp_path / "out", name="scaling", by_nodes=True)
    assert analyze_cmd.run(args) == 0  # 10.2 / 8.0: within 1.3x
    table = (tmp_path / "out" / "scaling-by-nodes.md").read_text()
    assert "| 100MB-4 | 10 | 56.05 | 9.04 | 0.16x | 10.0x / 1.0x | 90% |" in table
    png = (tmp_path / "out" / "scaling-by-nodes.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert json.loads(files[0].read_text())["settings"]["nodes"] == 5
