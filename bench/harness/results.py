"""What `measure` records and `analyze` reads: one JSON document per run.

Modes are named as in Spegel's pages: `baseline` (containerd straight to the
upstream) and `mirror`. Phases: `create` (a new DaemonSet, v1) and `update`
(a rolling update to v2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness.cases import Case

SCHEMA = 1
MODES = ("baseline", "mirror")
PHASES = ("create", "update")


@dataclass(frozen=True)
class Pull:
    case: str  # "10MB-1"
    mode: str
    phase: str
    node: str
    batch: int  # 0-based: which wave of the rollout this pull belonged to
    image: str
    duration: float  # seconds


@dataclass(frozen=True)
class Upstream:
    """Bytes the upstream served during one batch (local runs only: counted at the WAN relay)."""

    case: str
    mode: str
    phase: str
    batch: int
    bytes: int


@dataclass(frozen=True)
class Cpu:
    """CPU seconds spent during one batch (local runs only; see `cpu.py`)."""

    case: str
    mode: str
    phase: str
    batch: int
    wall: float  # the batch's seconds
    cores: int
    busy: float  # the whole machine
    containerd: float
    mirror: float
    clients: float  # the `ctr` pulls


@dataclass
class Run:
    source: str  # "local" or "kubernetes"
    settings: dict[str, Any] = field(default_factory=dict)
    image_sizes: dict[str, int] = field(default_factory=dict)  # case -> bytes of one image
    pulls: list[Pull] = field(default_factory=list)
    upstream: list[Upstream] = field(default_factory=list)
    cpu: list[Cpu] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, **asdict(self)}, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unknown result schema {data.get('schema')!r}")
        return cls(
            source=data["source"],
            settings=data.get("settings", {}),
            image_sizes=data.get("image_sizes", {}),
            pulls=[Pull(**p) for p in data.get("pulls", [])],
            upstream=[Upstream(**u) for u in data.get("upstream", [])],
            cpu=[Cpu(**c) for c in data.get("cpu", [])],
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())


def load(path: Path) -> Run:
    return Run.from_dict(json.loads(Path(path).read_text()))


def merge(runs: Iterable[Run]) -> Run:
    """Several runs as one: a real cluster measures baseline and mirror in separate runs."""
    runs = list(runs)
    if not runs:
        raise ValueError("nothing to merge")
    merged = Run(source="+".join(sorted({r.source for r in runs})))
    for run in runs:
        merged.settings = {**run.settings, **merged.settings}
        merged.image_sizes.update(run.image_sizes)
        merged.pulls.extend(run.pulls)
        merged.upstream.extend(run.upstream)
        merged.cpu.extend(run.cpu)
    return merged


def case_order(case: str) -> tuple[int, int]:
    """Sort key for case names: by size, then layers."""
    parsed = Case.parse(case)
    return parsed.size, parsed.layers
