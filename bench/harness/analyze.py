"""A run's results as files: the JSON, the markdown table and the PNG charts.

The charts' matplotlib (the `bench` extra) is imported when they are drawn.
"""

from __future__ import annotations

from pathlib import Path

from bench.harness.report import markdown
from bench.harness.results import Run


def write_report(run: Run, out_dir: Path, stem: str = "cluster-pulls") -> dict[str, Path]:
    from bench.harness import charts

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md"}
    run.save(files["json"])
    files["markdown"].write_text(markdown(run))
    files["pull_times"] = charts.pull_times(run, out_dir / f"{stem}-times.png")
    upstream = charts.upstream_bytes(run, out_dir / f"{stem}-upstream.png")
    if upstream is not None:
        files["upstream"] = upstream
    return files
