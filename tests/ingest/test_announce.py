"""When downloads in progress are published (pure, fake time)."""

from __future__ import annotations

from mirror.ingest.announce import AnnounceInflight, AnnouncePlan, IngestGone
from mirror.ingest.records import Ingest, IngestEnded, IngestProgressed, IngestStarted

D = "sha256:" + "a" * 64


def _ingest(size: int, total: int = 1000) -> Ingest:
    return Ingest("b" * 64, D, total, size)


def test_nothing_is_announced_before_the_first_byte() -> None:
    plan = AnnouncePlan(refresh=3.0)
    assert plan.changes([IngestStarted(_ingest(0))], 0.0) == []
    assert plan.changes([IngestProgressed(_ingest(10))], 0.1) == [AnnounceInflight(D, 10, 1000)]


def test_growth_is_announced_again_only_after_the_refresh_interval() -> None:
    plan = AnnouncePlan(refresh=3.0)
    plan.changes([IngestStarted(_ingest(10))], 0.0)
    assert plan.changes([IngestProgressed(_ingest(20))], 1.0) == []
    assert plan.changes([IngestProgressed(_ingest(30))], 2.9) == []
    assert plan.changes([IngestProgressed(_ingest(40))], 3.0) == [AnnounceInflight(D, 40, 1000)]


def test_the_end_says_whether_anything_was_announced() -> None:
    plan = AnnouncePlan()
    assert plan.changes([IngestEnded(_ingest(0))], 0.0) == [IngestGone(D, announced=False)]
    plan.changes([IngestStarted(_ingest(5))], 1.0)
    assert plan.changes([IngestEnded(_ingest(1000))], 2.0) == [IngestGone(D, announced=True)]
    assert len(plan) == 0
