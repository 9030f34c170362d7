"""The live feed: publishing never waits; a listener that falls behind is told so."""

from __future__ import annotations

import trio
import trio.testing

from mirror.web.feed import EventFeed


def test_since_returns_what_came_after_the_cursor() -> None:
    feed: EventFeed[str] = EventFeed(size=4)
    for name in "abc":
        feed.publish(name)
    batch = feed.since(1)
    assert batch.events == [(2, "b"), (3, "c")] and batch.dropped == 0 and batch.cursor == 3
    assert feed.since(3).events == []


def test_a_listener_more_than_a_ring_behind_skips_ahead() -> None:
    feed: EventFeed[int] = EventFeed(size=4)
    for i in range(10):
        feed.publish(i)
    batch = feed.since(0)
    assert [event for _, event in batch.events] == [6, 7, 8, 9]
    assert batch.dropped == 6 and batch.cursor == 10
    limited = feed.since(0, limit=2)
    assert [event for _, event in limited.events] == [8, 9] and limited.dropped == 8


def test_recent_is_the_newest_events() -> None:
    feed: EventFeed[int] = EventFeed(size=8)
    for i in range(5):
        feed.publish(i)
    assert [event for _, event in feed.recent(2)] == [3, 4]
    assert feed.recent(0) == []


async def test_publish_wakes_every_waiting_listener_without_waiting_itself() -> None:
    feed: EventFeed[str] = EventFeed()
    woken: list[int] = []

    async def listener(n: int) -> None:
        await feed.wait(feed.published)
        woken.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(listener, n)
        await trio.testing.wait_all_tasks_blocked()
        feed.publish("x")  # synchronous: nothing here can block the caller
    assert sorted(woken) == [0, 1, 2]


async def test_wait_returns_at_once_when_something_is_new() -> None:
    feed: EventFeed[str] = EventFeed()
    feed.publish("x")
    with trio.fail_after(1):
        await feed.wait(0)
