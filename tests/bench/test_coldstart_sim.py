"""The cold-start simulation drives the product's own cores: checked on small clusters."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pytest

from bench.coldstart_sim import MB, ColdStartSim, SimConfig, add_arguments, run, simulate


def _config(**changes: float) -> SimConfig:
    base = {
        "nodes": 30,
        "layers": 3,
        "layer_size": 30 * MB,
        "uplink": 100 * MB,
        "downlink": 100 * MB,
        "upstream": 1000 * MB,
        "dt": 0.01,
        "time_limit": 120.0,
    }
    base.update(changes)
    return SimConfig(**base)  # type: ignore[arg-type]


def test_every_node_gets_the_image_and_each_layer_leaves_the_upstream_once() -> None:
    result = simulate(_config())
    assert result.unfinished == 0 and len(result.times) == 30
    assert result.upstream_fetches == {0: 1, 1: 1, 2: 1}
    assert min(result.times) >= result.ideal - 0.05  # nobody beats its own downlink
    assert result.claims["won"] == 3


def test_staggered_starts_use_complete_holders_too() -> None:
    result = simulate(_config(stagger=5.0))
    assert result.unfinished == 0
    assert result.upstream_fetches == {0: 1, 1: 1, 2: 1}


def test_the_stream_cap_spreads_the_uploads() -> None:
    capped = simulate(_config(peer_streams=2))
    uncapped = simulate(_config(peer_streams=0))
    assert capped.busiest_share < uncapped.busiest_share
    assert uncapped.busiest_share > 0.3  # without a cap the first holder serves most


@pytest.mark.parametrize("nodes", [1, 2])
def test_tiny_clusters(nodes: int) -> None:
    result = simulate(_config(nodes=nodes))
    assert result.unfinished == 0
    assert sum(result.upstream_fetches.values()) == 3


def _striping(**changes: float) -> SimConfig:
    """Layers past the striping threshold, starts spread over 30 s, holders' uplinks a
    quarter of a puller's downlink (what striping is for)."""
    return _config(
        layer_size=100 * MB, nodes=20, stagger=30.0, uplink=50 * MB, downlink=200 * MB, **changes
    )


def test_a_late_node_stripes_over_idle_complete_holders() -> None:
    one = simulate(_striping(stripe_width=1))
    striped = simulate(_striping(stripe_width=4))
    assert striped.unfinished == 0 and striped.upstream_fetches == {0: 1, 1: 1, 2: 1}
    # A late node's downlink is filled by several holders instead of one.
    assert statistics.fmean(striped.times) < statistics.fmean(one.times)


def test_striping_never_takes_a_stream_a_puller_needs() -> None:
    """Every node at once: the uplinks are the limit, and a stripe over busy holders
    would hold streams other pullers wait for (27.4 s p50 against 17.2 at 1,000 nodes,
    in the model where each node fetched the layers in its own order)."""
    one = simulate(_config(layer_size=100 * MB, stripe_width=1))
    striped = simulate(_config(layer_size=100 * MB, stripe_width=4))
    assert striped.percentile(0.5) <= one.percentile(0.5) * 1.02


def _all_at_once(**changes: float) -> SimConfig:
    """The 1,000-node case in small: every node at once, 4 layers fetched 3 at a time,
    a stream cap of 3 (each node takes as many streams as it offers)."""
    return _config(nodes=60, layers=4, layer_size=60 * MB, **changes)


def test_the_what_if_rules_keep_one_upstream_fetch_per_layer() -> None:
    result = simulate(_all_at_once(preempt=True, max_pause=0.05))
    assert result.unfinished == 0
    assert result.upstream_fetches == {0: 1, 1: 1, 2: 1, 3: 1}
    assert result.preempted > 0
    assert min(result.times) >= result.ideal - 0.05


def test_every_node_asks_for_the_layers_in_manifest_order() -> None:
    sim = ColdStartSim(_all_at_once())
    assert all(pending == [3, 2, 1, 0] for pending in sim.pending)  # popped from the end
    shuffled = ColdStartSim(_all_at_once(order="random"))
    assert any(pending != [3, 2, 1, 0] for pending in shuffled.pending)


def test_one_claim_spreads_the_claims_over_nodes() -> None:
    first_takes_all = simulate(_all_at_once(one_claim=False))
    spread = simulate(_all_at_once())
    # Without the rule the first node to ask wins the claims of the three layers it
    # fetches first, and its uplink is the root of three layers at once.
    assert len({first_takes_all.claimants[layer] for layer in (0, 1, 2)}) == 1
    assert len({spread.claimants[layer] for layer in (0, 1, 2)}) == 3
    assert spread.upstream_fetches == {0: 1, 1: 1, 2: 1, 3: 1}


def test_passing_one_download_on_shortens_a_mass_cold_start() -> None:
    """What the research for the cold-start issue found at 1,000 nodes (p50 37.6 s ->
    16.4 s with every node fetching in manifest order), in small: without the rule
    the first layer asked for takes its receivers' every stream slot."""
    without = simulate(_all_at_once(forward_one=False))
    product = simulate(_all_at_once())
    assert product.unfinished == 0
    assert product.upstream_fetches == {0: 1, 1: 1, 2: 1, 3: 1}
    assert product.percentile(0.5) < without.percentile(0.5) * 0.8
    assert product.percentile(0.99) < without.percentile(0.99)
    assert product.preempted == 0  # --preempt is off: the streams ended were leaves


def test_full_nodes_end_leaf_streams_only_with_the_rule() -> None:
    assert simulate(_all_at_once()).leaves_ended > 0
    assert simulate(_all_at_once(forward_one=False)).leaves_ended == 0


def test_fetching_every_layer_at_once_with_as_many_stream_slots_nears_the_ideal() -> None:
    """containerd's default fetches 3 layers at a time, so the 4th starts only when one
    ends and runs alone, through trees each of whose nodes feeds 3 peers. With every
    layer fetched at once (max_concurrent_downloads 4) and a stream cap to match, the
    image flows at the node's full rate (at 1,000 nodes: p50 16.4 s -> 10.7 s)."""
    default = simulate(_all_at_once())
    matched = simulate(_all_at_once(parallel=4, peer_streams=4))
    assert matched.unfinished == 0
    assert matched.upstream_fetches == {0: 1, 1: 1, 2: 1, 3: 1}
    assert matched.percentile(0.5) < default.percentile(0.5) * 0.8
    assert matched.percentile(0.5) < matched.ideal * 1.2


def test_the_command_passes_containerds_parallelism_on(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "sim.json"
    argv = ["--nodes", "12", "--image-gb", "0.1", "--parallel", "2", "--peer-streams", "2"]
    args = parser.parse_args([*argv, "--out", str(out)])
    assert run(args) == 0
    (summary,) = json.loads(out.read_text())["runs"]
    assert (summary["config"]["parallel"], summary["config"]["peer_streams"]) == (2, 2)
    assert summary["unfinished"] == 0
