from __future__ import annotations

import pytest

from bench.harness.stats import describe, improvement, percentile


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    data = [4.0, 1.0, 3.0, 2.0]
    assert percentile(data, 50) == pytest.approx(2.5)
    assert percentile(data, 99) == pytest.approx(3.97)
    assert percentile(data, 0) == 1.0
    assert percentile(data, 100) == 4.0
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_percentile_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_describe_five_nodes() -> None:
    stats = describe([1.2, 0.2, 0.25, 0.15, 0.2])
    assert stats.n == 5
    assert stats.mean == pytest.approx(0.4)
    assert stats.p50 == pytest.approx(0.2)
    # rank 0.99 x 4 = 3.96: between the 4th (0.25) and 5th (1.2) values.
    assert stats.p99 == pytest.approx(0.25 + 0.96 * (1.2 - 0.25))
    assert (stats.min, stats.max) == (0.15, 1.2)


def test_improvement_is_spegels_formula() -> None:
    assert improvement(1.0, 0.1) == pytest.approx(90.0)
    assert improvement(8.429, 6.682) == pytest.approx(20.73, abs=0.01)
    assert improvement(1.0, 1.5) == pytest.approx(-50.0)
    with pytest.raises(ValueError):
        improvement(0.0, 1.0)
