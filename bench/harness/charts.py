"""PNG charts of a run: pull-time distributions per phase and image, without vs with mirror."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

from bench.harness.cases import Case
from bench.harness.results import Run, case_order
from bench.harness.scaling import ScalingPoint

COLORS = {"baseline": "#164577", "mirror": "#E8890C"}  # Spegel's chart palette
LOG_SPAN = 8
LABELS = {"baseline": "without mirror", "mirror": "with mirror"}
PHASE_TITLES = {
    "create": "Create: every node pulls v1 at once",
    "update": "Update: rolling, v2 a batch at a time",
}


def _seconds(value: float, _position: object) -> str:
    return f"{value:.2g}s"


def _seconds_2_5(value: float, _position: object) -> str:
    """Minor ticks of a log axis: only 2x and 5x get a label, the rest would crowd."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:.2g}s" if round(mantissa) in (2, 5) else ""


def _case_label(case: str) -> str:
    parsed = Case.parse(case)
    return f"{parsed.label}\n{parsed.layers} layer{'s' if parsed.layers > 1 else ''}"


def _scale(ax: Axes, values: list[float]) -> None:
    """Linear from zero unless the times span more than LOG_SPAN: then log, labelled in seconds."""
    if values and min(values) > 0 and max(values) / min(values) > LOG_SPAN:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(FuncFormatter(_seconds_2_5))
    else:
        ax.set_ylim(bottom=0, top=max(values, default=1) * 1.08)
    ax.yaxis.set_major_formatter(FuncFormatter(_seconds))


def _phase_axes(ax: Axes, run: Run, phase: str, cases: list[str]) -> None:
    width = 0.36
    every: list[list[float]] = []
    for offset, mode in ((-0.2, "baseline"), (0.2, "mirror")):
        data = [
            [p.duration for p in run.pulls if (p.case, p.phase, p.mode) == (c, phase, mode)]
            for c in cases
        ]
        positions = [i + offset for i, values in enumerate(data) if values]
        data = [values for values in data if values]
        every += data
        if not data:
            continue
        boxes = ax.boxplot(
            data,
            positions=positions,
            widths=width,
            patch_artist=True,
            showfliers=False,
            medianprops={"color": "black", "linewidth": 1.2},
        )
        for box in boxes["boxes"]:
            box.set_facecolor(COLORS[mode] + "55")
            box.set_edgecolor(COLORS[mode])
        for x, values in zip(positions, data, strict=True):
            spread = [
                x + width * 0.6 * (j / max(len(values) - 1, 1) - 0.5) for j in range(len(values))
            ]
            ax.scatter(spread, values, s=14, color=COLORS[mode], zorder=3, label=None)
        means = [sum(v) / len(v) for v in data]
        ax.scatter(
            positions, means, marker="D", s=22, color="white", edgecolor=COLORS[mode], zorder=4
        )
    _scale(ax, [v for values in every for v in values])
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([_case_label(c) for c in cases])
    ax.set_title(PHASE_TITLES.get(phase, phase), fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)


def pull_times(run: Run, path: Path) -> Path:
    """Box plots (all nodes as dots, the average as a diamond), one panel per phase."""
    cases = sorted({p.case for p in run.pulls}, key=case_order)
    phases = [phase for phase in ("create", "update") if any(p.phase == phase for p in run.pulls)]
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 4), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        _phase_axes(ax, run, phase, cases)
    axes[0][0].set_ylabel("pull time per node")
    handles = [
        plt.Line2D([], [], marker="s", linestyle="", markersize=9, color=COLORS[m], label=LABELS[m])
        for m in ("baseline", "mirror")
    ]
    handles.append(
        plt.Line2D(
            [], [], marker="D", linestyle="", color="grey", markerfacecolor="white", label="average"
        )
    )
    nodes = run.settings.get("nodes")
    link = run.settings.get("link", {}).get("description", "")
    title = f"Image pull times, {nodes} nodes" if nodes else "Image pull times"
    fig.suptitle(f"{title}{', upstream link ' + link if link else ''}", fontsize=11)
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def upstream_bytes(run: Run, path: Path) -> Path | None:
    """Bars: bytes the upstream served per phase, as a multiple of the image size."""
    if not run.upstream:
        return None
    cases = sorted({u.case for u in run.upstream}, key=case_order)
    phases = ("create", "update")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, phase in zip(axes, phases, strict=True):
        for offset, mode in ((-0.2, "baseline"), (0.2, "mirror")):
            values = []
            for case in cases:
                size = run.image_sizes.get(case) or 1
                served = [
                    u.bytes
                    for u in run.upstream
                    if (u.case, u.phase, u.mode) == (case, phase, mode)
                ]
                values.append(sum(served) / size)
            ax.bar(
                [i + offset for i in range(len(cases))],
                values,
                0.38,
                color=COLORS[mode],
                label=LABELS[mode],
            )
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([c.replace("-", " x") for c in cases])
        ax.set_title(f"{phase.capitalize()}: bytes the upstream served", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("x image size")
    fig.legend(
        handles=axes[0].get_legend_handles_labels()[0], loc="lower center", ncol=2, frameon=False
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pull_time_by_nodes(found: list[ScalingPoint], path: Path) -> Path:
    """Lines: create-phase p50 against node count, without and with the mirror, per image."""
    cases = sorted({p.case for p in found}, key=case_order)
    fig, axes = plt.subplots(1, len(cases), figsize=(4.6 * len(cases), 3.8), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        series = [p for p in found if p.case == case]
        nodes = [p.nodes for p in series]
        for mode, values in (
            ("baseline", [p.baseline_p50 for p in series]),
            ("mirror", [p.mirror_p50 for p in series]),
        ):
            ax.plot(nodes, values, marker="o", color=COLORS[mode], label=LABELS[mode])
            for x, y in zip(nodes, values, strict=True):
                ax.annotate(
                    f"{y:.1f}s",
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=8,
                    color=COLORS[mode],
                )
        ax.set_xticks(nodes)
        ax.set_xlabel("nodes pulling at once")
        ax.set_ylim(bottom=0, top=max(p.baseline_p50 for p in series) * 1.15)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0f}s"))
        ax.set_title(f"Create, {_case_label(case).replace(chr(10), ', ')}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("p50 pull time")
    fig.legend(
        handles=axes[0][0].get_legend_handles_labels()[0],
        loc="lower center",
        ncol=2,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
