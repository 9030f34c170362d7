"""The wire codec: round trips, the 1,200-byte limit, and hostile input."""

from __future__ import annotations

import ipaddress

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.auth import TAG_SIZE, Authenticator
from dht.messages import (
    MAX_DATAGRAM,
    MAX_KEYS_PER_ADD,
    MAX_PAYLOAD,
    VERSION,
    AddProvider,
    AddProviderAck,
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
        {"v": 1},
        "hello",
    ],
)
def test_rejects_invalid_envelopes(obj: object) -> None:
    with pytest.raises(DecodeError):
        decode(msgpack.packb(obj))


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
