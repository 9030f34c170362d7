"""Several byte ranges in one `Range` header (pure)."""

from __future__ import annotations

import pytest

from mirror.oci.ranges import MAX_RANGES, ByteRange, Unsatisfiable, parse_ranges


def test_ranges_are_sorted_merged_and_clipped() -> None:
    assert parse_ranges("bytes=100-199, 0-9,-16", 1000) == [
        ByteRange(0, 9),
        ByteRange(100, 199),
        ByteRange(984, 999),
    ]
    assert parse_ranges("bytes=0-99,50-149,150-199", 1000) == [ByteRange(0, 199)]
    assert parse_ranges("bytes=900-2000,5-", 1000) == [ByteRange(5, 999)]


def test_unsatisfiable_ranges_are_dropped_and_none_left_is_a_416() -> None:
    assert parse_ranges("bytes=2000-,0-0", 1000) == [ByteRange(0, 0)]
    with pytest.raises(Unsatisfiable):
        parse_ranges("bytes=1000-,5000-6000", 1000)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "items=0-1,2-3",
        "bytes=0-9,x-y",
        "bytes=0-9,",
        "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1)),
    ],
)
def test_what_is_not_a_usable_set_of_ranges_is_the_whole_body(header: str | None) -> None:
    assert parse_ranges(header, 10_000) is None
