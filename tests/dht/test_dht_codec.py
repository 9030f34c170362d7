"""The wire codec: round trips, the 1,200-byte limit, and hostile input."""

from __future__ import annotations

import ipaddress

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.auth import REPLAY_WINDOW, SEAL_SIZE, Authenticator, Refusal, ReplayGuard
from dht.messages import (
    CLAIM,
    CLAIM_ANSWER,
    CLAIM_LOST,
    CLAIM_REFUSED,
    CLAIM_WON,
    MAX_DATAGRAM,
    MAX_KEYS_PER_ADD,
    MAX_LEASE,
    MAX_PAYLOAD,
    RELEASE,
    RELEASED,
    SMALL_REPLY,
    VERSION,
    AddInflight,
    AddProvider,
    AddProviderAck,
    ClaimReply,
    ClaimRequest,
    Contact,
    DecodeError,
    Envelope,
    FindNode,
    GetProviders,
    Nodes,
    Ping,
    Pong,
    Provider,
    Providers,
    Release,
    Released,
    Retry,
    decode,
    encode,
    reply_room,
)

ID = bytes(range(16))
OTHER = bytes(range(16, 32))


def contact(i: int, v6: bool = False) -> Contact:
    host = f"2001:db8::{i + 1:x}:ffff:ffff:ffff" if v6 else f"10.0.{i // 256}.{i % 256}"
    host = str(ipaddress.ip_address(host))  # canonical, as decoded
    return Contact(i.to_bytes(16, "big"), host, 5001 + i % 1000)


def provider(i: int, v6: bool = False) -> Provider:
    c = contact(i, v6)
    return Provider(c.node_id, c.host, c.port, 5000 + i % 1000)


def inflight(i: int, progress: tuple[int, int], v6: bool = False) -> Provider:
    p = provider(i, v6)
    return Provider(p.node_id, p.host, p.udp_port, p.registry_port, progress)


MESSAGES = [
    Ping(),
    Pong("127.0.0.2", 5001),
    Pong("::1", 40000),
    FindNode(OTHER),
    Nodes((contact(1), contact(2, v6=True))),
    Nodes(()),
    AddProvider("127.0.0.3", 5001, 5000, (ID, OTHER)),
    AddProvider("2001:db8::1", 65535, 65535, ()),
    AddProviderAck(2),
    GetProviders(OTHER, 20),
    Providers((provider(1), provider(2, v6=True)), (contact(3),)),
    ClaimRequest(OTHER, 5.0, "127.0.0.3", 5001, 5000),
    ClaimRequest(OTHER, MAX_LEASE, "::1", 65535, 65535),
    ClaimReply(CLAIM_WON, provider(4), 5.0),
    ClaimReply(CLAIM_LOST, provider(5, v6=True), 0.0),
    ClaimReply(CLAIM_REFUSED, None, 0.0),
    Release(OTHER, "127.0.0.3", 5001, 5000),
    Released(True),
    Released(False),
    AddInflight(OTHER, "127.0.0.3", 1, 5000, 0, 0),
    AddInflight(OTHER, "2001:db8::2", 65535, 65535, 10, 2**64 - 1),
    Retry(),
    Providers((inflight(1, (5, 10)), provider(2), inflight(3, (2**64 - 1,) * 2, True)), ()),
    ClaimReply(CLAIM_LOST, inflight(6, (1, 2)), 1.5),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    for cookie in (COOKIE, None) if not isinstance(message, Retry) else (COOKIE,):
        envelope = Envelope(2**64 - 1, ID, message, cookie)  # type: ignore[arg-type]
        data = encode(envelope)
        assert len(data) <= MAX_PAYLOAD
        assert decode(data) == envelope


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_zero_padding_is_accepted_and_nothing_else(message: object) -> None:
    cookie = COOKIE if isinstance(message, Retry) else None
    envelope = Envelope(7, ID, message, cookie)  # type: ignore[arg-type]
    padded = encode(envelope, pad_to=MAX_PAYLOAD)
    assert len(padded) == MAX_PAYLOAD
    assert decode(padded) == envelope
    with pytest.raises(DecodeError):
        decode(padded[:-1] + b"\x01")
    assert len(encode(envelope, budget=600, pad_to=MAX_PAYLOAD)) <= 600


def test_small_replies_fit_the_padding_of_a_request_without_cookie() -> None:
    v6 = Provider(b"\xff" * 16, "2001:db8::ffff:ffff:ffff:ffff", 65535, 65535)
    for message in (
        Pong("2001:db8::ffff:ffff:ffff:ffff", 65535),
        ClaimReply(CLAIM_LOST, v6, MAX_LEASE),
        AddProviderAck(2**32 - 1),
        Released(True),
        Retry(),
    ):
        data = encode(Envelope(2**64 - 1, ID, message, COOKIE))
        assert len(data) <= SMALL_REPLY
        assert reply_room(Ping()) == SMALL_REPLY
    assert reply_room(FindNode(ID)) == reply_room(GetProviders(ID, 20)) == MAX_PAYLOAD


@pytest.mark.parametrize("v6", [False, True])
def test_long_lists_are_cut_to_fit(v6: bool) -> None:
    many_contacts = tuple(contact(i, v6) for i in range(200))
    data = encode(Envelope(1, ID, Nodes(many_contacts)))
    assert len(data) <= MAX_PAYLOAD
    decoded = decode(data).message
    assert isinstance(decoded, Nodes)
    assert 10 < len(decoded.contacts) < 200
    assert decoded.contacts == many_contacts[: len(decoded.contacts)]

    many_providers = tuple(provider(i, v6) for i in range(200))
    data = encode(Envelope(1, ID, Providers(many_providers, many_contacts)))
    assert len(data) <= MAX_PAYLOAD
    decoded = decode(data).message
    assert isinstance(decoded, Providers)
    assert 10 < len(decoded.providers) < 200
    assert decoded.providers == many_providers[: len(decoded.providers)]


def test_providers_leave_room_for_contacts_when_few() -> None:
    contacts = tuple(contact(i) for i in range(20))
    data = encode(Envelope(1, ID, Providers((provider(1),), contacts)))
    decoded = decode(data).message
    assert isinstance(decoded, Providers)
    assert decoded.contacts == contacts


def test_a_full_add_provider_fits_with_a_seal() -> None:
    keys = tuple(i.to_bytes(16, "big") for i in range(MAX_KEYS_PER_ADD))
    message = AddProvider("2001:db8::ffff:ffff:ffff:ffff", 65535, 65535, keys)
    data = encode(Envelope(2**64 - 1, ID, message, COOKIE))
    assert len(Authenticator(b"k").seal(data, 1e9, 2**64 - 1)) <= MAX_DATAGRAM
    assert decode(data).message == message
    assert MAX_KEYS_PER_ADD >= 60
    assert MAX_PAYLOAD + SEAL_SIZE == MAX_DATAGRAM


IP4 = b"\x7f\x00\x00\x01"
COOKIE = b"c" * 8
H = [VERSION, 1, 7, ID, None]  # a PING's head, cookie nil: the fields follow


def head(kind: int, cookie: object = None) -> list[object]:
    return [VERSION, kind, 7, ID, cookie]


@pytest.mark.parametrize(
    "obj",
    [
        [VERSION + 1, 1, 7, ID, None],  # unknown version
        [VERSION - 1, 1, 7, ID],  # the previous version's PING
        [VERSION, 99, 7, ID, None],  # unknown type
        [*H, "extra"],  # wrong arity
        [VERSION, 1, 7, ID],  # no cookie field
        [VERSION, 1, -1, ID, None],  # negative request id
        [VERSION, 1, 7, ID[:15], None],  # short sender id
        [VERSION, 1, 7, "x" * 16, None],  # str, not bin
        [True, 1, 7, ID, None],  # bool is not an int here
        [VERSION, 1, 7, ID, b"short"],  # cookie of the wrong size
        [VERSION, 1, 7, ID, "c" * 8],  # str cookie
        [VERSION, 1, 7, ID, 5],  # int cookie
        head(14),  # a RETRY without a cookie
        [*head(14, COOKIE), 1],  # a RETRY with a field
        [*head(3), ID + b"x"],  # long target
        [*head(4), [[ID, b"\x7f\x00\x00", 5001]]],  # 3-byte IP
        [*head(4), [[ID, IP4, 0]]],  # port 0
        [*head(4), [[ID, IP4, 70000]]],  # port too big
        [*head(4), {"a": 1}],  # map, not list
        [*head(5), IP4, 5001, 5000, [ID, 3]],  # key not bin
        [*head(5), 5000, [ID]],  # the old form: no address
        [*head(5), b"\x7f\x00", 5001, 5000, [ID]],  # bad IP
        [*head(5), IP4, 0, 5000, [ID]],  # UDP port 0
        [*head(5), IP4, 5001, 65536, [ID]],  # registry port too big
        [*head(7), ID, True],  # bool limit
        [*head(CLAIM), ID, 5.0],  # wrong arity
        [*head(CLAIM), ID, 5.0, 5000],  # the old form: no address
        [*head(CLAIM), ID[:15], 5.0, IP4, 5001, 5000],  # short key
        [*head(CLAIM), ID, 0.0, IP4, 5001, 5000],  # no lease
        [*head(CLAIM), ID, -1.0, IP4, 5001, 5000],  # negative lease
        [*head(CLAIM), ID, MAX_LEASE + 0.5, IP4, 5001, 5000],  # lease over the bound
        [*head(CLAIM), ID, float("nan"), IP4, 5001, 5000],  # nan lease
        [*head(CLAIM), ID, float("inf"), IP4, 5001, 5000],  # infinite lease
        [*head(CLAIM), ID, 5, IP4, 5001, 5000],  # int, not float
        [*head(CLAIM), ID, True, IP4, 5001, 5000],  # bool lease
        [*head(CLAIM), ID, 5.0, IP4, 5001, 0],  # port 0
        [*head(CLAIM), ID, 5.0, IP4, 65536, 5000],  # port too big
        [*head(CLAIM), ID, 5.0, b"", 5001, 5000],  # empty IP
        [*head(CLAIM_ANSWER), 3, None, 0.0],  # unknown status
        [*head(CLAIM_ANSWER), True, None, 0.0],  # bool status
        [*head(CLAIM_ANSWER), CLAIM_WON, None, 5.0],  # won without a holder
        [*head(CLAIM_ANSWER), CLAIM_LOST, [ID, IP4, 5001], 5.0],
        [*head(CLAIM_ANSWER), CLAIM_LOST, [ID, IP4, 5001, 0], 5.0],
        [*head(CLAIM_ANSWER), CLAIM_WON, [ID, IP4, 1, 2], -1.0],
        [*head(CLAIM_ANSWER), CLAIM_WON, [ID, IP4, 1, 2], 31.0],
        [*head(CLAIM_ANSWER), CLAIM_REFUSED, [ID, IP4, 1, 2], 0.0],
        [*head(CLAIM_ANSWER), CLAIM_REFUSED, None, 1.0],  # a refusal has no lease
        [*head(8), [[ID, IP4, 5001, 5000, 1]], []],  # 5 fields
        [*head(8), [[ID, IP4, 5001, 5000, 3, 2]], []],  # done > total
        [*head(8), [[ID, IP4, 5001, 5000, -1, 2]], []],
        [*head(8), [[ID, IP4, 5001, 5000, True, 2]], []],
        [*head(8), [[ID, IP4, 5001, 5000, 1, 2, 3]], []],
        [*head(13), ID, IP4, 5001, 5000, 1],  # wrong arity
        [*head(13), ID, 5000, 1, 2],  # the old form: no address
        [*head(13), ID, IP4, 5001, 5000, 2, 1],  # done > total
        [*head(13), ID, IP4, 5001, 0, 1, 2],  # port 0
        [*head(13), ID, IP4, 5001, 5000, 1.0, 2],  # float count
        [*head(13), ID[:8], IP4, 5001, 5000, 1, 2],  # short key
        [*head(RELEASE), ID + b"x", IP4, 5001, 5000],  # long key
        [*head(RELEASE), ID],  # the old form: no address
        [*head(RELEASE)],  # no key
        [*head(RELEASED), 1],  # int, not bool
        [*head(RELEASED), None],
        {"v": 1},
        "hello",
    ],
)
def test_rejects_invalid_envelopes(obj: object) -> None:
    with pytest.raises(DecodeError):
        decode(msgpack.packb(obj))


def test_claim_messages_fit_with_a_seal() -> None:
    v6 = Provider(b"\xff" * 16, "2001:db8::ffff:ffff:ffff:ffff", 65535, 65535)
    for message in (
        ClaimRequest(b"\xff" * 16, MAX_LEASE, v6.host, 65535, 65535),
        ClaimReply(CLAIM_LOST, v6, MAX_LEASE),
        Release(b"\xff" * 16, v6.host, 65535, 65535),
    ):
        data = encode(Envelope(2**64 - 1, ID, message, COOKIE))
        assert len(Authenticator(b"k").seal(data, 1e9, 1)) <= MAX_DATAGRAM
        assert decode(data).message == message


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=16, max_size=16),
    st.floats(min_value=0.0, max_value=MAX_LEASE, exclude_min=True),
    st.integers(1, 65535),
    st.sampled_from([CLAIM_WON, CLAIM_LOST]),
    st.booleans(),
)
def test_claim_round_trips(key: bytes, lease: float, port: int, status: int, v6: bool) -> None:
    host = "2001:db8::1" if v6 else "10.1.2.3"
    for message in (
        ClaimRequest(key, lease, host, port, port),
        ClaimReply(status, provider(port % 500, v6), lease),
        Release(key, host, port, port),
    ):
        assert decode(encode(Envelope(1, key, message))).message == message


def test_complete_provider_records_keep_their_four_field_form() -> None:
    data = encode(Envelope(1, ID, Providers((provider(1),), ())))
    fields = msgpack.unpackb(data)
    assert len(fields[5][0]) == 4
    data = encode(Envelope(1, ID, Providers((inflight(1, (3, 4)),), ())))
    assert msgpack.unpackb(data)[5][0][4:] == [3, 4]


def test_rejects_oversized_and_garbage() -> None:
    with pytest.raises(DecodeError):
        decode(b"\x90" * (MAX_DATAGRAM + 1))
    for junk in (b"", b"\xc1", b"\x94\x01", b"\xdd\xff\xff\xff\xff"):
        with pytest.raises(DecodeError):
            decode(junk)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1300))
def test_decoder_never_raises_anything_but_decode_error(data: bytes) -> None:
    try:
        envelope = decode(data)
    except DecodeError:
        return
    assert isinstance(envelope, Envelope)
    assert len(envelope.sender_id) == 16


VALID = [encode(Envelope(12345, ID, m, COOKIE), pad_to=200) for m in MESSAGES]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@settings(max_examples=1000, deadline=None)
@given(mutated())
def test_mutated_messages_decode_or_fail_cleanly(data: bytes) -> None:
    try:
        envelope = decode(data)
    except DecodeError:
        return
    assert encode(envelope) is not None  # whatever decodes is a well-formed message again


def test_authenticator() -> None:
    a, b, none = Authenticator(b"secret"), Authenticator(b"other"), Authenticator(None)
    sealed = a.seal(b"payload", 1000.0, 1)
    assert len(sealed) == len(b"payload") + SEAL_SIZE
    assert a.open(sealed, 1000.0) == b"payload"
    assert a.open(sealed, 1000.0) is Refusal.REPLAYED  # once only
    assert b.open(a.seal(b"payload", 1000.0, 2), 1000.0) is Refusal.UNAUTHENTICATED
    assert a.open(b"payload", 1000.0) is Refusal.UNAUTHENTICATED
    fresh = a.seal(b"payload", 1000.0, 3)
    assert a.open(fresh[:-1] + bytes([fresh[-1] ^ 1]), 1000.0) is Refusal.UNAUTHENTICATED
    assert a.open(b"", 1000.0) is Refusal.UNAUTHENTICATED
    # The stamp is under the tag: moving it breaks the tag.
    moved = fresh[:-SEAL_SIZE] + (2000000).to_bytes(8, "big") + fresh[-SEAL_SIZE + 8 :]
    assert a.open(moved, 2000.0) is Refusal.UNAUTHENTICATED
    assert none.open(b"payload", 1000.0) == b"payload"
    assert none.seal(b"payload", 1000.0, 4) == b"payload"
    long_key = Authenticator(b"k" * 200)
    assert long_key.open(long_key.seal(b"x", 5.0, 1), 5.0) == b"x"
    with pytest.raises(ValueError):
        Authenticator(b"")


def test_a_sealed_datagram_is_accepted_within_the_window_only() -> None:
    a = Authenticator(b"secret")
    window = REPLAY_WINDOW
    assert a.open(a.seal(b"p", 1000.0, 1), 1000.0 + window) == b"p"  # late, in time
    assert a.open(a.seal(b"p", 1000.0, 2), 1000.0 - window) == b"p"  # a clock ahead of ours
    assert a.open(a.seal(b"p", 1000.0, 3), 1000.0 + window + 0.01) is Refusal.STALE
    assert a.open(a.seal(b"p", 1000.0, 4), 1000.0 - window - 0.01) is Refusal.STALE


def test_the_replay_guard_is_bounded_and_never_reopens() -> None:
    guard = ReplayGuard(window=30.0, capacity=100)
    now = 1_000_000
    for nonce in range(1000):  # a flood of authentic datagrams, 1 ms apart
        assert guard.check(now + nonce, nonce, now + nonce) is None
        assert len(guard) <= 100
    end = now + 999
    # Every one of them is refused again: the remembered by nonce, the forgotten
    # by the floor that rose as they were forgotten.
    for nonce in range(1000):
        assert guard.check(now + nonce, nonce, end) is not None
    assert guard.check(end + 1, 5000, end + 1) is None  # newer ones still pass
    # The window moves on: old nonces are forgotten, old stamps refused.
    later = end + 31_000
    assert guard.check(end, 6000, later) is Refusal.STALE
    assert guard.check(later, 6001, later) is None
    assert len(guard) <= 100
