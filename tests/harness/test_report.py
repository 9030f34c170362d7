"""Results -> rows, improvements, targets and the markdown table, on a hand-made run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness.report import checks, markdown, rows
from bench.harness.results import Cpu, Pull, Run, Upstream, load, merge

SIZE = 10 * 2**20


def _run() -> Run:
    run = Run("local", settings={"nodes": 5, "first_update_batch": 1, "max_unavailable": "20%"})
    run.image_sizes["10MB-1"] = SIZE
    times = {
        ("baseline", "create"): [2.0, 2.0, 2.0, 2.0, 2.0],
        ("mirror", "create"): [2.0, 2.0, 2.0, 2.0, 1.0],
        ("baseline", "update"): [1.0, 1.0, 1.0, 1.0, 1.0],
        ("mirror", "update"): [1.0, 0.1, 0.1, 0.1, 0.2],
    }
    for (mode, phase), values in times.items():
        for i, seconds in enumerate(values):
            batch = i if phase == "update" else 0
            run.pulls.append(Pull("10MB-1", mode, phase, f"node-{i + 1}", batch, "r", seconds))
    for mode in ("baseline", "mirror"):
        run.upstream.append(Upstream("10MB-1", mode, "create", 0, 5 * SIZE))
        for batch in range(5):
            served = SIZE if mode == "baseline" or batch == 0 else 0
            run.upstream.append(Upstream("10MB-1", mode, "update", batch, served))
    # 2 cores; the create phase took 2 s each way, the mirror's update batches 0.5 s each.
    run.cpu.append(Cpu("10MB-1", "baseline", "create", 0, 2.0, 2, 2.0, 1.0, 0.0, 0.2))
    run.cpu.append(Cpu("10MB-1", "mirror", "create", 0, 2.0, 2, 3.8, 1.6, 1.2, 0.4))
    for batch in range(5):
        run.cpu.append(Cpu("10MB-1", "mirror", "update", batch, 0.5, 2, 0.5, 0.2, 0.1, 0.0))
    return run


def test_rows_improvements_and_upstream_multiples() -> None:
    create, update = rows(_run())
    assert (create.phase, update.phase) == ("create", "update")
    assert update.baseline is not None and update.mirror is not None
    assert update.mirror.mean == pytest.approx(0.3)
    assert update.improvement_mean == pytest.approx(70.0)
    assert update.improvement_p50 == pytest.approx(90.0)
    assert update.upstream == {"baseline": pytest.approx(5.0), "mirror": pytest.approx(1.0)}
    assert create.improvement_mean == pytest.approx(10.0)
    assert create.upstream == {"baseline": pytest.approx(5.0), "mirror": pytest.approx(5.0)}


def test_targets_apply_to_the_update_average_and_the_create_upstream() -> None:
    upstream, check = checks(rows(_run()))
    assert upstream.name == "create upstream bytes 10MB-1 (x image)"
    assert upstream.value == pytest.approx(5.0) and not upstream.passed
    assert check.name == "update improvement 10MB-1 (avg)"
    assert check.value == pytest.approx(70.0)
    assert check.threshold == 90.0
    assert not check.passed


def test_markdown_table_beside_spegels_figures() -> None:
    text = markdown(_run())
    assert "| 10MB x1 | 1.00 / 1.00 / 1.00 | 0.30 / 0.10 / 0.97 | 70% | 90% |" in text
    assert "81% (1220 -> 210 ms)" in text
    assert "| 5.0x / 1.0x |" in text
    assert "cannot exceed 80%" in text
    assert "| 10MB x1 | 2.00 / 2.00 / 2.00 | 1.80 / 2.00 / 2.00 | 10% | 5.0x / 5.0x |" in text
    assert "[FAIL] update improvement 10MB-1 (avg): 70.00% (target >= 90%)" in text
    # CPU as a share of the cores' time: the mirror's create phase had them 95% busy;
    # the update phase sums its batches (2.5 of 5 CPU seconds).
    assert "| 10MB x1 | create | baseline | 50% | 25% | 0% | 5% |" in text
    assert "| 10MB x1 | create | mirror | 95% | 40% | 30% | 10% |" in text
    assert "| 10MB x1 | update | mirror | 50% | 20% | 10% | 0% |" in text
    assert "| update | baseline |" not in text  # not measured: no row


def test_a_one_mode_run_has_no_improvement() -> None:
    run = _run()
    run.pulls = [p for p in run.pulls if p.mode == "mirror"]
    update = rows(run)[1]
    assert update.baseline is None and update.improvement_mean is None
    assert [c.name for c in checks(rows(run))] == ["create upstream bytes 10MB-1 (x image)"]
    assert "| 10MB x1 | - | 0.30 / 0.10 / 0.97 | - | - |" in markdown(run)


def test_create_pull_time_target_for_large_images() -> None:
    run = Run("local", settings={"nodes": 2})
    run.image_sizes["100MB-1"] = 100 * 2**20
    for mode, seconds in (("baseline", 10.0), ("mirror", 3.0)):
        for node in ("node-1", "node-2"):
            run.pulls.append(Pull("100MB-1", mode, "create", node, 0, "r", seconds))
        served = (2 if mode == "baseline" else 1) * 100 * 2**20
        run.upstream.append(Upstream("100MB-1", mode, "create", 0, served))
    upstream, p50 = checks(rows(run))
    assert upstream.passed and upstream.value == pytest.approx(1.0)
    assert p50.name == "create p50 100MB-1 (with / without)"
    assert p50.value == pytest.approx(0.3) and p50.passed


def test_json_round_trip_and_merging_two_kubernetes_runs(tmp_path: Path) -> None:
    run = _run()
    run.save(tmp_path / "r.json")
    again = load(tmp_path / "r.json")
    assert again == run
    baseline = Run("kubernetes", pulls=[p for p in run.pulls if p.mode == "baseline"])
    mirror = Run("kubernetes", pulls=[p for p in run.pulls if p.mode == "mirror"])
    merged = merge([baseline, mirror])
    assert merged.source == "kubernetes"
    assert len(merged.pulls) == len(run.pulls)
    older = run.to_json().replace('"cpu"', '"cpu_unknown"')  # a result from before `cpu`
    (tmp_path / "old.json").write_text(older)
    assert load(tmp_path / "old.json").cpu == []
    (tmp_path / "bad.json").write_text('{"schema": 99}')
    with pytest.raises(ValueError):
        load(tmp_path / "bad.json")
