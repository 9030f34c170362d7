"""The connection core on fake time: every transition, no sockets."""

from __future__ import annotations

import gc
import weakref

import pytest

from mirror.server.core import (
    Close,
    ConnectionConfig,
    ConnectionCore,
    NeedData,
    RequestReady,
    SendError,
)
from mirror.server.request import Limits

CONFIG = ConnectionConfig(head_timeout=10.0, idle_timeout=60.0)
GET = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"


def request_ready(core: ConnectionCore, now: float) -> RequestReady:
    event = core.next_event(now)
    assert isinstance(event, RequestReady), event
    return event


def answer(core: ConnectionCore, now: float, *, response_close: bool = False) -> bool:
    """One response written; returns whether it announced close."""
    close = core.closes_after(response_close)
    core.response_sent(now)
    return close


def test_keep_alive_two_requests_one_connection() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    assert core.next_event(0.0) == NeedData(60.0, idle=True)
    core.receive(GET)
    assert request_ready(core, 1.0).request.path == "/v2/"
    assert answer(core, 2.0) is False
    # Idle again: the idle clock restarts from the response.
    assert core.next_event(2.0) == NeedData(62.0, idle=True)
    core.receive(b"GET /livez HTTP/1.1\r\n\r\n")
    assert request_ready(core, 3.0).request.path == "/livez"
    assert answer(core, 3.0) is False
    assert isinstance(core.next_event(3.0), NeedData)


def test_pipelined_heads_in_one_chunk_are_answered_in_order() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(
        GET + b"GET /livez HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    paths = []
    for _ in range(3):
        paths.append(request_ready(core, 0.0).request.path)
        closed = answer(core, 0.0)
    assert paths == ["/v2/", "/livez", "/readyz"]
    assert closed is True
    assert core.next_event(0.0) == Close("response closed the connection")


def test_bytes_after_a_head_start_the_next_one() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(GET + b"GET /li")
    request_ready(core, 0.0)
    answer(core, 50.0)
    # The rest of the second head is awaited with a fresh head deadline, not an idle one.
    assert core.next_event(50.0) == NeedData(60.0, idle=False)
    core.receive(b"vez HTTP/1.1\r\n\r\n")
    assert request_ready(core, 51.0).request.path == "/livez"


def test_head_deadline_answers_408_then_closes() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(b"GET /v2/ HTTP/1.1\r\nHost: slow")
    assert core.next_event(1.0) == NeedData(11.0, idle=False)
    core.receive(b"-loris")
    # More bytes do not move the deadline.
    assert core.next_event(9.0) == NeedData(11.0, idle=False)
    assert core.next_event(11.0) == SendError(408, "UNSUPPORTED", "request head timed out")
    assert core.next_event(11.0) == Close("request head timed out")
    assert core.next_event(12.0) == Close("request head timed out")


def test_a_completed_head_clears_its_deadline() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(b"GET /v2/ HTTP/1.1\r\n")
    assert core.next_event(0.0) == NeedData(10.0, idle=False)
    core.receive(b"\r\n")
    request_ready(core, 9.0)
    answer(core, 9.5)
    assert core.next_event(9.5) == NeedData(69.5, idle=True)


def test_idle_timeout_closes_without_an_answer() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    assert core.next_event(0.0) == NeedData(60.0, idle=True)
    assert core.next_event(60.0) == Close("idle timeout")


def test_drain_while_idle_closes_at_once() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(GET)
    request_ready(core, 0.0)
    answer(core, 0.0)
    assert isinstance(core.next_event(0.0), NeedData)
    core.drain()
    assert core.next_event(1.0) == Close("draining")


def test_drain_mid_response_finishes_it_then_closes() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(GET)
    request_ready(core, 0.0)
    # The head went out with keep-alive; the drain comes while the body is sent.
    assert core.closes_after(False) is False
    core.drain()
    core.response_sent(5.0)
    assert core.next_event(5.0) == Close("draining")


def test_drain_before_the_head_is_written_announces_close() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(GET + GET)
    request_ready(core, 0.0)
    core.drain()
    assert answer(core, 0.0) is True
    # The pipelined second request is not started: the first said it was the last.
    assert core.next_event(0.0) == Close("response closed the connection")


def test_drain_still_answers_a_begun_head_with_close() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(b"GET /v2/ HTTP/1.1\r\n")
    core.drain()
    assert core.next_event(0.0) == NeedData(10.0, idle=False)
    core.receive(b"\r\n")
    request_ready(core, 1.0)
    assert answer(core, 1.0) is True


def test_response_close_and_request_close_end_keep_alive() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(GET)
    request_ready(core, 0.0)
    assert answer(core, 0.0, response_close=True) is True
    assert isinstance(core.next_event(0.0), Close)

    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(b"GET /v2/ HTTP/1.0\r\n\r\n")
    request_ready(core, 0.0)
    assert answer(core, 0.0) is True


def test_a_request_with_a_body_is_answered_then_closed() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(b"GET /v2/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert request_ready(core, 0.0).request.has_body
    assert answer(core, 0.0) is True


@pytest.mark.parametrize(
    ("data", "limits", "status", "code"),
    [
        (b"\x16\x03\x01 not http\r\n\r\n", Limits(), 400, "UNSUPPORTED"),
        (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", Limits(max_url=64), 414, "NAME_INVALID"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 200, Limits(max_head=128), 431, "UNSUPPORTED"),
        (
            b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 5 + b"\r\n",
            Limits(max_headers=4),
            431,
            "UNSUPPORTED",
        ),
        (b"GET / HTTP/2.0\r\n\r\n", Limits(), 505, "UNSUPPORTED"),
    ],
)
def test_heads_out_of_bounds_get_their_status_then_close(
    data: bytes, limits: Limits, status: int, code: str
) -> None:
    core = ConnectionCore(ConnectionConfig(limits=limits), now=0.0)
    core.receive(data)
    event = core.next_event(0.0)
    assert isinstance(event, SendError)
    assert (event.status, event.code) == (status, code)
    assert isinstance(core.next_event(0.0), Close)


def test_client_closing_mid_head_closes_without_an_answer() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(b"GET /v2/ HTT")
    assert isinstance(core.next_event(0.0), NeedData)
    core.receive(b"")
    assert core.next_event(0.0) == Close("peer closed mid-head")


def test_client_closing_while_idle() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.peer_closed()
    assert core.next_event(0.0) == Close("peer closed")


def test_requests_read_before_the_peer_closed_are_still_answered() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(GET)
    core.receive(b"")
    request_ready(core, 0.0)
    answer(core, 0.0)
    assert core.next_event(0.0) == Close("peer closed")


def test_empty_lines_start_the_head_clock() -> None:
    # The empty lines HTTP lets a client send before a request line begin no head in
    # the parser, but they are bytes: a client trickling them is cut at the head deadline.
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(b"\r\n")
    assert core.next_event(1.0) == NeedData(11.0, idle=True)
    core.receive(b"\r\n")
    assert core.next_event(6.0) == NeedData(11.0, idle=True)
    core.receive(b"\r\n")
    assert core.next_event(11.0) == SendError(408, "UNSUPPORTED", "request head timed out")
    assert core.next_event(11.0) == Close("request head timed out")


def test_empty_lines_after_a_response_start_the_head_clock_too() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(GET)
    request_ready(core, 0.0)
    answer(core, 1.0)
    core.receive(b"\r\n")
    assert core.next_event(30.0) == NeedData(40.0, idle=True)
    assert isinstance(core.next_event(40.0), SendError)


def test_a_head_after_empty_lines_keeps_their_deadline_and_is_answered() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(b"\r\n")
    assert core.next_event(0.0) == NeedData(10.0, idle=True)
    core.receive(b"GET /v2/ HTTP/1.1\r\n")
    assert core.next_event(9.0) == NeedData(10.0, idle=False)
    core.receive(b"\r\n")
    assert request_ready(core, 9.5).request.path == "/v2/"
    answer(core, 9.5)
    assert core.next_event(9.5) == NeedData(69.5, idle=True)


def test_a_drain_closes_a_connection_that_sent_only_empty_lines() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(b"\r\n\r\n")
    assert core.next_event(0.0) == NeedData(10.0, idle=True)
    core.drain()
    assert core.next_event(1.0) == Close("draining")


def test_release_frees_the_parser_without_the_cycle_collector() -> None:
    core = ConnectionCore(CONFIG, now=0.0)
    core.receive(GET)
    request_ready(core, 0.0)
    answer(core, 0.0)
    parser = weakref.ref(core._parser)
    gc.disable()
    try:
        core.release()
        del core
        assert parser() is None
    finally:
        gc.enable()
