"""The ingest directory's files parsed strictly, and the in-flight table's transitions."""

from __future__ import annotations

import pytest

from mirror.ingest.records import (
    InflightTable,
    Ingest,
    IngestEnded,
    IngestProgressed,
    IngestStarted,
    digest_from_ref,
    is_ingest_dir_name,
    parse_total,
)

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"
OTHER = "sha256:" + "f" * 64


@pytest.mark.parametrize(
    "ref",
    [
        f"k8s.io/1/layer-sha256:{HEX}",
        f"default/17/config-sha256:{HEX}\n",
        f"k8s.io/3/manifest-sha256:{HEX}",
        f"sha256:{HEX}",
    ],
)
def test_digest_from_containerds_refs(ref: str) -> None:
    assert digest_from_ref(ref.encode()) == DIGEST


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"k8s.io/1/layer-sha256:" + HEX[:-1].encode(),  # short
        b"k8s.io/1/layer-sha256:" + HEX.upper().encode(),  # not lower-case hex
        b"k8s.io/1/layer-sha256:" + HEX.encode() + b"/../../etc",
        b"k8s.io/1/layer-sha512:" + HEX.encode() * 2,
        b"\xff\xfe" + HEX.encode(),
        b"x" * 5000 + b"-sha256:" + HEX.encode(),  # over the size bound
        b"k8s.io/1/layerxsha256:" + HEX.encode(),
    ],
)
def test_anything_else_is_no_digest(raw: bytes) -> None:
    assert digest_from_ref(raw) is None


@pytest.mark.parametrize(("raw", "total"), [(b"123", 123), (b"0\n", 0), (b" 42 ", 42)])
def test_total(raw: bytes, total: int) -> None:
    assert parse_total(raw) == total


@pytest.mark.parametrize("raw", [b"", b"-1", b"1e9", b"12a", b"9" * 40, b"\xff"])
def test_bad_totals(raw: bytes) -> None:
    assert parse_total(raw) is None


def test_directory_names() -> None:
    assert is_ingest_dir_name(HEX)
    assert not is_ingest_dir_name("..")
    assert not is_ingest_dir_name(HEX + "0")
    assert not is_ingest_dir_name(HEX.upper())


def test_table_start_progress_end() -> None:
    table = InflightTable()
    first = Ingest("a" * 64, DIGEST, 100, 0)
    assert table.update({first.directory: first}) == [IngestStarted(first)]
    assert table.get(DIGEST) == first
    assert table.update({first.directory: first}) == []
    grown = Ingest(first.directory, DIGEST, 100, 60)
    assert table.update({first.directory: grown}) == [IngestProgressed(grown)]
    assert table.update({}) == [IngestEnded(grown)]
    assert table.get(DIGEST) is None and table.all() == []


def test_two_ingests_of_one_digest_end_with_the_last() -> None:
    table = InflightTable()
    one = Ingest("a" * 64, DIGEST, 100, 10)
    two = Ingest("b" * 64, DIGEST, 100, 70)
    other = Ingest("c" * 64, OTHER, 5, 1)
    changes = table.update({one.directory: one, two.directory: two, other.directory: other})
    assert [type(c) for c in changes].count(IngestStarted) == 2  # one per digest
    assert table.get(DIGEST) == two  # the one furthest along
    assert [i.digest for i in table.all()] == sorted([DIGEST, OTHER])
    assert table.update({one.directory: one, other.directory: other}) == []
    assert table.get(DIGEST) == one
    assert table.update({other.directory: other}) == [IngestEnded(one)]


def test_complete() -> None:
    assert Ingest("a" * 64, DIGEST, 10, 10).complete
    assert not Ingest("a" * 64, DIGEST, 10, 9).complete
