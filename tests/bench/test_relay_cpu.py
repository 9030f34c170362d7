"""`python -m bench relay-cpu` end to end on a small blob: real holder and client
processes, both proving movers, every byte accounted for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import relay_cpu


def test_every_mode_moves_every_body_and_the_relays_cost_cpu(tmp_path: Path) -> None:
    out = tmp_path / "relay_cpu.json"
    args = argparse.Namespace(blob_mib=8, bodies=2, repeat=1, out=out)
    assert relay_cpu.run(args) == 0
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"direct", "copy", "tee"}
    for mode, samples in runs.items():
        (sample,) = samples
        assert sample["mib_s"] > 0 and sample["machine_cpu_s_per_gib"] > 0
        assert (sample["relay_cpu_s_per_gib"] > 0) == (mode != "direct")
