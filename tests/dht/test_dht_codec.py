"""The wire codec: round trips, the 1,200-byte limit, and hostile input."""

from __future__ import annotations

import ipaddress

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.auth import TAG_SIZE, Authenticator
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
    decode,
    encode,
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
    AddProvider(5000, (ID, OTHER)),
    AddProviderAck(2),
    GetProviders(OTHER, 20),
    Providers((provider(1), provider(2, v6=True)), (contact(3),)),
    ClaimRequest(OTHER, 5.0, 5000),
    ClaimRequest(OTHER, MAX_LEASE, 65535),
    ClaimReply(CLAIM_WON, provider(4), 5.0),
    ClaimReply(CLAIM_LOST, provider(5, v6=True), 0.0),
    ClaimReply(CLAIM_REFUSED, None, 0.0),
    Release(OTHER),
    Released(True),
    Released(False),
    AddInflight(OTHER, 5000, 0, 0),
    AddInflight(OTHER, 65535, 10, 2**64 - 1),
    Providers((inflight(1, (5, 10)), provider(2), inflight(3, (2**64 - 1,) * 2, True)), ()),
    ClaimReply(CLAIM_LOST, inflight(6, (1, 2)), 1.5),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    envelope = Envelope(2**64 - 1, ID, message)  # type: ignore[arg-type]
    data = encode(envelope)
    assert len(data) <= MAX_PAYLOAD
    assert decode(data) == envelope


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


def test_a_full_add_provider_fits_with_a_tag() -> None:
    keys = tuple(i.to_bytes(16, "big") for i in range(MAX_KEYS_PER_ADD))
    data = encode(Envelope(2**64 - 1, ID, AddProvider(65535, keys)))
    assert len(Authenticator(b"k").seal(data)) <= MAX_DATAGRAM
    assert decode(data).message == AddProvider(65535, keys)
    assert MAX_KEYS_PER_ADD >= 60
    assert MAX_PAYLOAD + TAG_SIZE == MAX_DATAGRAM


@pytest.mark.parametrize(
    "obj",
    [
        [VERSION + 1, 1, 7, ID],  # unknown version
        [VERSION, 99, 7, ID],  # unknown type
        [VERSION, 1, 7, ID, "extra"],  # wrong arity
        [VERSION, 1, -1, ID],  # negative request id
        [VERSION, 1, 7, ID[:15]],  # short sender id
        [VERSION, 1, 7, "x" * 16],  # str, not bin
        [True, 1, 7, ID],  # bool is not an int here
        [VERSION, 3, 7, ID, ID + b"x"],  # long target
        [VERSION, 4, 7, ID, [[ID, b"\x7f\x00\x00", 5001]]],  # 3-byte IP
        [VERSION, 4, 7, ID, [[ID, b"\x7f\x00\x00\x01", 0]]],  # port 0
        [VERSION, 4, 7, ID, [[ID, b"\x7f\x00\x00\x01", 70000]]],  # port too big
        [VERSION, 4, 7, ID, {"a": 1}],  # map, not list
        [VERSION, 5, 7, ID, 5000, [ID, 3]],  # key not bin
        [VERSION, 7, 7, ID, ID, True],  # bool limit
        [VERSION, CLAIM, 7, ID, ID, 5.0],  # wrong arity
        [VERSION, CLAIM, 7, ID, ID[:15], 5.0, 5000],  # short key
        [VERSION, CLAIM, 7, ID, ID, 0.0, 5000],  # no lease
        [VERSION, CLAIM, 7, ID, ID, -1.0, 5000],  # negative lease
        [VERSION, CLAIM, 7, ID, ID, MAX_LEASE + 0.5, 5000],  # lease over the bound
        [VERSION, CLAIM, 7, ID, ID, float("nan"), 5000],  # nan lease
        [VERSION, CLAIM, 7, ID, ID, float("inf"), 5000],  # infinite lease
        [VERSION, CLAIM, 7, ID, ID, 5, 5000],  # int, not float
        [VERSION, CLAIM, 7, ID, ID, True, 5000],  # bool lease
        [VERSION, CLAIM, 7, ID, ID, 5.0, 0],  # port 0
        [VERSION, CLAIM, 7, ID, ID, 5.0, 65536],  # port too big
        [VERSION, CLAIM_ANSWER, 7, ID, 3, None, 0.0],  # unknown status
        [VERSION, CLAIM_ANSWER, 7, ID, True, None, 0.0],  # bool status
        [VERSION, CLAIM_ANSWER, 7, ID, CLAIM_WON, None, 5.0],  # won without a holder
        [VERSION, CLAIM_ANSWER, 7, ID, CLAIM_LOST, [ID, b"\x7f\x00\x00\x01", 5001], 5.0],
        [VERSION, CLAIM_ANSWER, 7, ID, CLAIM_LOST, [ID, b"\x7f\x00\x00\x01", 5001, 0], 5.0],
        [VERSION, CLAIM_ANSWER, 7, ID, CLAIM_WON, [ID, b"\x7f\x00\x00\x01", 1, 2], -1.0],
        [VERSION, CLAIM_ANSWER, 7, ID, CLAIM_WON, [ID, b"\x7f\x00\x00\x01", 1, 2], 31.0],
        [VERSION, CLAIM_ANSWER, 7, ID, CLAIM_REFUSED, [ID, b"\x7f\x00\x00\x01", 1, 2], 0.0],
        [VERSION, CLAIM_ANSWER, 7, ID, CLAIM_REFUSED, None, 1.0],  # a refusal has no lease
        [VERSION, 8, 7, ID, [[ID, b"\x7f\x00\x00\x01", 5001, 5000, 1]], []],  # 5 fields
        [VERSION, 8, 7, ID, [[ID, b"\x7f\x00\x00\x01", 5001, 5000, 3, 2]], []],  # done > total
        [VERSION, 8, 7, ID, [[ID, b"\x7f\x00\x00\x01", 5001, 5000, -1, 2]], []],
        [VERSION, 8, 7, ID, [[ID, b"\x7f\x00\x00\x01", 5001, 5000, True, 2]], []],
        [VERSION, 8, 7, ID, [[ID, b"\x7f\x00\x00\x01", 5001, 5000, 1, 2, 3]], []],
        [VERSION, 13, 7, ID, ID, 5000, 1],  # wrong arity
        [VERSION, 13, 7, ID, ID, 5000, 2, 1],  # done > total
        [VERSION, 13, 7, ID, ID, 0, 1, 2],  # port 0
        [VERSION, 13, 7, ID, ID, 5000, 1.0, 2],  # float count
        [VERSION, 13, 7, ID, ID[:8], 5000, 1, 2],  # short key
        [VERSION, RELEASE, 7, ID, ID + b"x"],  # long key
        [VERSION, RELEASE, 7, ID],  # no key
        [VERSION, RELEASED, 7, ID, 1],  # int, not bool
        [VERSION, RELEASED, 7, ID, None],
        {"v": 1},
        "hello",
    ],
)
def test_rejects_invalid_envelopes(obj: object) -> None:
    with pytest.raises(DecodeError):
        decode(msgpack.packb(obj))


def test_claim_messages_fit_with_a_tag() -> None:
    v6 = Provider(b"\xff" * 16, "2001:db8::ffff:ffff:ffff:ffff", 65535, 65535)
    for message in (
        ClaimRequest(b"\xff" * 16, MAX_LEASE, 65535),
        ClaimReply(CLAIM_LOST, v6, MAX_LEASE),
        Release(b"\xff" * 16),
    ):
        data = encode(Envelope(2**64 - 1, ID, message))
        assert len(Authenticator(b"k").seal(data)) <= MAX_DATAGRAM
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
    for message in (
        ClaimRequest(key, lease, port),
        ClaimReply(status, provider(port % 500, v6), lease),
        Release(key),
    ):
        assert decode(encode(Envelope(1, key, message))).message == message


def test_complete_provider_records_keep_their_four_field_form() -> None:
    data = encode(Envelope(1, ID, Providers((provider(1),), ())))
    fields = msgpack.unpackb(data)
    assert len(fields[4][0]) == 4
    data = encode(Envelope(1, ID, Providers((inflight(1, (3, 4)),), ())))
    assert msgpack.unpackb(data)[4][0][4:] == [3, 4]


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


VALID = [encode(Envelope(12345, ID, m)) for m in MESSAGES]


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
    sealed = a.seal(b"payload")
    assert len(sealed) == len(b"payload") + TAG_SIZE
    assert a.open(sealed) == b"payload"
    assert b.open(sealed) is None
    assert a.open(b"payload") is None
    assert a.open(sealed[:-1] + bytes([sealed[-1] ^ 1])) is None
    assert a.open(b"") is None
    assert none.open(b"payload") == b"payload"
    long_key = Authenticator(b"k" * 200)
    assert long_key.open(long_key.seal(b"x")) == b"x"
    with pytest.raises(ValueError):
        Authenticator(b"")
