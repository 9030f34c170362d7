"""DHT messages as frozen dataclasses, and their msgpack wire codec.

A datagram's payload is one msgpack array, possibly followed by zero bytes:

    [version, type, request_id, sender_id, cookie, *fields] 00 00 ...

Node ids and key ids are 16-byte bins, IP addresses packed 4- or 16-byte bins.
`cookie` is nil or an 8-byte bin: in a request, the cookie the destination
gave us (see `cookies.py`); in a reply, a fresh cookie for the requester's
address. A request sent without a cookie is padded with zeros so that the
answer it asks for is no larger than the request. Messages that announce
where this node is (ADD_PROVIDER, ADD_INFLIGHT, CLAIM, RELEASE) carry its
address: IP, UDP port and registry port. Lists of contacts or providers are
cut so that the encoded payload fits the budget (1,200 bytes less the seal).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import msgpack

from .auth import SEAL_SIZE
from .ids import ID_BYTES

VERSION = 2
MAX_DATAGRAM = 1200
MAX_PAYLOAD = MAX_DATAGRAM - SEAL_SIZE  # room is kept for the seal whether or not a key is set
COOKIE_SIZE = 8

PING, PONG, FIND_NODE, NODES, ADD_PROVIDER, ADD_PROVIDER_ACK, GET_PROVIDERS, PROVIDERS = range(1, 9)
CLAIM, CLAIM_ANSWER, RELEASE, RELEASED, ADD_INFLIGHT, RETRY = range(9, 15)
MAX_BYTES = (1 << 64) - 1  # progress counters are uint64

MAX_LEASE = 30.0  # seconds; a CLAIM asking for more, or an answer naming more, is malformed
# CLAIM_ANSWER status
CLAIM_WON, CLAIM_LOST, CLAIM_REFUSED = range(3)

# Worst-case sizes, used to decide how many items fit before encoding them.
# Array header, version, type, uint64 id, sender bin, cookie bin:
_HEAD_MAX = 1 + 1 + 1 + 9 + (2 + ID_BYTES) + (2 + COOKIE_SIZE)
_KEY_ITEM = 2 + ID_BYTES
_ORIGIN_MAX = (2 + 16) + 3 + 3  # IPv6 address, UDP port, registry port
MAX_KEYS_PER_ADD = (MAX_PAYLOAD - _HEAD_MAX - _ORIGIN_MAX - 3) // _KEY_ITEM  # array16 header
# Room for any reply but NODES and PROVIDERS (the largest: a CLAIM_ANSWER naming
# an IPv6 holder, 93 bytes): what a request sent without a cookie is padded to.
SMALL_REPLY = 128


class DecodeError(ValueError):
    """A datagram that is not a well-formed message of a version we speak."""


@dataclass(frozen=True, slots=True)
class Contact:
    """A DHT node as seen on the network."""

    node_id: bytes
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Provider:
    """A node that serves a key, and where: its router (UDP) and registry (HTTP) ports."""

    node_id: bytes
    host: str
    udp_port: int
    registry_port: int
    # (bytes so far, total) while the provider is still fetching the key; None once complete.
    progress: tuple[int, int] | None = None

    @property
    def inflight(self) -> bool:
        return self.progress is not None


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[int] = PING
    IS_REPLY: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Pong:
    """Carries back the address the request came from, as the responder saw it."""

    TYPE: ClassVar[int] = PONG
    IS_REPLY: ClassVar[bool] = True
    observed_host: str
    observed_port: int


@dataclass(frozen=True, slots=True)
class FindNode:
    TYPE: ClassVar[int] = FIND_NODE
    IS_REPLY: ClassVar[bool] = False
    target: bytes


@dataclass(frozen=True, slots=True)
class Nodes:
    TYPE: ClassVar[int] = NODES
    IS_REPLY: ClassVar[bool] = True
    contacts: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class AddProvider:
    """Store the sender as a provider of `keys`, reached at `host`: UDP and registry ports."""

    TYPE: ClassVar[int] = ADD_PROVIDER
    IS_REPLY: ClassVar[bool] = False
    host: str
    udp_port: int
    registry_port: int
    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AddProviderAck:
    TYPE: ClassVar[int] = ADD_PROVIDER_ACK
    IS_REPLY: ClassVar[bool] = True
    stored: int


@dataclass(frozen=True, slots=True)
class GetProviders:
    TYPE: ClassVar[int] = GET_PROVIDERS
    IS_REPLY: ClassVar[bool] = False
    key: bytes
    limit: int


@dataclass(frozen=True, slots=True)
class Providers:
    TYPE: ClassVar[int] = PROVIDERS
    IS_REPLY: ClassVar[bool] = True
    providers: tuple[Provider, ...]
    contacts: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class AddInflight:
    """Store the sender as an in-flight provider of `key`, `done` of `total` bytes
    fetched so far (short TTL); answered with ADD_PROVIDER_ACK."""

    TYPE: ClassVar[int] = ADD_INFLIGHT
    IS_REPLY: ClassVar[bool] = False
    key: bytes
    host: str
    udp_port: int
    registry_port: int
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Claim `key` for `lease` seconds for the sender, reached at `host` (UDP, registry ports)."""

    TYPE: ClassVar[int] = CLAIM
    IS_REPLY: ClassVar[bool] = False
    key: bytes
    lease: float
    host: str
    udp_port: int
    registry_port: int


@dataclass(frozen=True, slots=True)
class ClaimReply:
    """CLAIM_WON / CLAIM_LOST with the holder and its remaining lease; CLAIM_REFUSED without."""

    TYPE: ClassVar[int] = CLAIM_ANSWER
    IS_REPLY: ClassVar[bool] = True
    status: int
    holder: Provider | None
    remaining: float


@dataclass(frozen=True, slots=True)
class Release:
    """Give up the sender's claim of `key`, made from `host` (UDP and registry ports)."""

    TYPE: ClassVar[int] = RELEASE
    IS_REPLY: ClassVar[bool] = False
    key: bytes
    host: str
    udp_port: int
    registry_port: int


@dataclass(frozen=True, slots=True)
class Released:
    TYPE: ClassVar[int] = RELEASED
    IS_REPLY: ClassVar[bool] = True
    released: bool


@dataclass(frozen=True, slots=True)
class Retry:
    """Not answered: the request's source is not verified and the answer would be
    larger than the request, or would change state. Ask again with the cookie of
    this reply's envelope."""

    TYPE: ClassVar[int] = RETRY
    IS_REPLY: ClassVar[bool] = True


Message = (
    Ping
    | Pong
    | FindNode
    | Nodes
    | AddProvider
    | AddProviderAck
    | GetProviders
    | Providers
    | ClaimRequest
    | ClaimReply
    | Release
    | Released
    | AddInflight
    | Retry
)


@dataclass(frozen=True, slots=True)
class Envelope:
    request_id: int
    sender_id: bytes
    message: Message
    cookie: bytes | None = None


def reply_room(message: Message, budget: int = MAX_PAYLOAD) -> int:
    """The largest payload a reply to `message` can have (lists fill `budget`):
    what a request sent without a cookie is padded to, so that its answer is
    no larger than the request."""
    return budget if isinstance(message, FindNode | GetProviders) else SMALL_REPLY


K = TypeVar("K")
V = TypeVar("V")


# -- addresses ---------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def pack_ip(host: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return ipaddress.IPv6Address(host).packed


@functools.lru_cache(maxsize=8192)
def unpack_ip(packed: bytes) -> str:
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    return socket.inet_ntop(socket.AF_INET6, packed)


# -- encoding ----------------------------------------------------------------

_packer = msgpack.Packer(autoreset=True, use_bin_type=True)
_pack = _packer.pack
_array_header = _packer.pack_array_header


class BoundedCache(dict[K, V]):
    """A dict that holds at most `size` entries, dropping the oldest first.

    The codec's caches are shared by every node of the process and their keys
    come from peers: callers put only validated, fixed-size keys in them, and
    the count is bounded here, so no datagram can grow memory."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: K, value: V) -> None:
        if key not in self and len(self) >= self.size:
            del self[next(iter(self))]
        self[key] = value


CACHE_SIZE = 8192

# Keyed by plain tuples: comparing those runs in C, comparing dataclasses does not.
_contact_wire: BoundedCache[tuple[bytes, str, int], bytes] = BoundedCache(CACHE_SIZE)
_provider_wire: BoundedCache[tuple[bytes, str, int, int, tuple[int, int] | None], bytes] = (
    BoundedCache(CACHE_SIZE)
)


def _contact_bytes(contact: Contact) -> bytes:
    key = (contact.node_id, contact.host, contact.port)
    data = _contact_wire.get(key)
    if data is None:
        data = _pack((key[0], pack_ip(key[1]), key[2]))
        _contact_wire.put(key, data)
    return data


def _provider_bytes(provider: Provider) -> bytes:
    p = provider
    key = (p.node_id, p.host, p.udp_port, p.registry_port, p.progress)
    data = _provider_wire.get(key)
    if data is None:
        fields = (key[0], pack_ip(key[1]), key[2], key[3])
        # An in-flight record carries (done, total) as two trailing fields.
        data = _pack(fields if p.progress is None else fields + p.progress)
        _provider_wire.put(key, data)
    return data


def _fit(items: list[bytes], room: int) -> tuple[bytes, int]:
    """An array of as many pre-encoded items as fit in `room` bytes, and its length."""
    used = 3  # array16 header, the largest one a datagram can need
    count = 0
    for item in items:
        if used + len(item) > room:
            break
        used += len(item)
        count += 1
    return _array_header(count) + b"".join(items[:count]), used - 3 + len(_array_header(count))


def encode(envelope: Envelope, budget: int = MAX_PAYLOAD, pad_to: int = 0) -> bytes:
    """Encode a message; contact and provider lists are cut to fit `budget` bytes.

    A payload shorter than `pad_to` is padded with zero bytes up to it."""
    m = envelope.message
    head = (
        _pack(VERSION)
        + _pack(m.TYPE)
        + _pack(envelope.request_id)
        + _pack(envelope.sender_id)
        + _pack(envelope.cookie)
    )
    room = budget - len(head) - 1
    if isinstance(m, Nodes):
        fields = [_fit([_contact_bytes(c) for c in m.contacts], room)[0]]
    elif isinstance(m, AddProvider):
        origin = _origin(m.host, m.udp_port, m.registry_port)
        keys, _ = _fit([_pack(k) for k in m.keys], room - sum(map(len, origin)))
        fields = [*origin, keys]
    elif isinstance(m, Providers):
        providers, used = _fit([_provider_bytes(p) for p in m.providers], room - 3)
        contacts, _ = _fit([_contact_bytes(c) for c in m.contacts], room - used)
        fields = [providers, contacts]
    else:
        fields = _fixed_fields(m)
    data = _array_header(5 + len(fields)) + head + b"".join(fields)
    if len(data) > budget:  # a fixed-size message over budget: a bug, never a network input
        raise ValueError(f"{type(m).__name__} encodes to {len(data)} bytes > {budget}")
    if len(data) < pad_to:
        data += bytes(min(pad_to, budget) - len(data))
    return data


def _origin(host: str, udp_port: int, registry_port: int) -> list[bytes]:
    return [_pack(pack_ip(host)), _pack(udp_port), _pack(registry_port)]


def _fixed_fields(m: Message) -> list[bytes]:
    if isinstance(m, Ping | Retry):
        return []
    if isinstance(m, Pong):
        return [_pack(pack_ip(m.observed_host)), _pack(m.observed_port)]
    if isinstance(m, FindNode):
        return [_pack(m.target)]
    if isinstance(m, AddProviderAck):
        return [_pack(m.stored)]
    if isinstance(m, GetProviders):
        return [_pack(m.key), _pack(m.limit)]
    return _claim_fields(m)


def _claim_fields(m: Message) -> list[bytes]:
    if isinstance(m, ClaimRequest):
        origin = _origin(m.host, m.udp_port, m.registry_port)
        return [_pack(m.key), _pack(float(m.lease)), *origin]
    if isinstance(m, ClaimReply):
        holder = _pack(None) if m.holder is None else _provider_bytes(m.holder)
        return [_pack(m.status), holder, _pack(float(m.remaining))]
    if isinstance(m, Release):
        return [_pack(m.key), *_origin(m.host, m.udp_port, m.registry_port)]
    if isinstance(m, Released):
        return [_pack(m.released)]
    if isinstance(m, AddInflight):
        origin = _origin(m.host, m.udp_port, m.registry_port)
        return [_pack(m.key), *origin, _pack(m.done), _pack(m.total)]
    raise TypeError(f"not a DHT message: {m!r}")  # pragma: no cover - the union is closed


# -- decoding ----------------------------------------------------------------


def _node_id(value: object) -> bytes:
    if type(value) is not bytes or len(value) != ID_BYTES:
        raise DecodeError("bad id")
    return value


def _port(value: object) -> int:
    if type(value) is not int or not 0 < value < 65536:
        raise DecodeError("bad port")
    return value


def _ip(value: object) -> str:
    if type(value) is not bytes or len(value) not in (4, 16):
        raise DecodeError("bad ip")
    return unpack_ip(value)


def _list(value: object) -> tuple[object, ...]:
    if type(value) is not tuple:
        raise DecodeError("not a list")
    return value


# The same contacts come back in reply after reply: decoded ones are kept,
# keyed by their wire tuple once it has been validated (so each key is small).
_contacts: BoundedCache[tuple[object, ...], Contact] = BoundedCache(CACHE_SIZE)
_providers: BoundedCache[tuple[object, ...], Provider] = BoundedCache(CACHE_SIZE)


def _contact(value: object) -> Contact:
    try:
        return _contacts[value]  # type: ignore[index]
    except (KeyError, TypeError):  # not seen yet, or not hashable (not a contact then)
        pass
    fields = _list(value)
    if len(fields) != 3:
        raise DecodeError("bad contact")
    contact = Contact(_node_id(fields[0]), _ip(fields[1]), _port(fields[2]))
    _contacts.put(fields, contact)
    return contact


def _provider(value: object) -> Provider:
    try:
        return _providers[value]  # type: ignore[index]
    except (KeyError, TypeError):
        pass
    fields = _list(value)
    if len(fields) == 4:
        progress = None
    elif len(fields) == 6:
        progress = _progress(fields[4], fields[5])
    else:
        raise DecodeError("bad provider")
    provider = Provider(
        _node_id(fields[0]), _ip(fields[1]), _port(fields[2]), _port(fields[3]), progress
    )
    _providers.put(fields, provider)
    return provider


def _byte_count(value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_BYTES:
        raise DecodeError("bad byte count")
    return value


def _progress(done: object, total: object) -> tuple[int, int]:
    progress = _byte_count(done), _byte_count(total)
    if progress[0] > progress[1]:
        raise DecodeError("more done than the total")
    return progress


def _add_provider(f: tuple[object, ...]) -> AddProvider:
    keys = tuple(_node_id(k) for k in _list(f[3]))
    return AddProvider(_ip(f[0]), _port(f[1]), _port(f[2]), keys)


def _add_inflight(f: tuple[object, ...]) -> AddInflight:
    done, total = _progress(f[4], f[5])
    return AddInflight(_node_id(f[0]), _ip(f[1]), _port(f[2]), _port(f[3]), done, total)


def _claim_request(f: tuple[object, ...]) -> ClaimRequest:
    return ClaimRequest(_node_id(f[0]), _lease(f[1]), _ip(f[2]), _port(f[3]), _port(f[4]))


def _release(f: tuple[object, ...]) -> Release:
    return Release(_node_id(f[0]), _ip(f[1]), _port(f[2]), _port(f[3]))


def _count(value: object) -> int:
    if type(value) is not int or not 0 <= value < 1 << 32:
        raise DecodeError("bad count")
    return value


def _providers_reply(f: tuple[object, ...]) -> Providers:
    return Providers(
        tuple(_provider(p) for p in _list(f[0])), tuple(_contact(c) for c in _list(f[1]))
    )


def _lease(value: object, low_ok: bool = False) -> float:
    if type(value) is not float or not math.isfinite(value):
        raise DecodeError("bad lease")
    if value > MAX_LEASE or value < 0.0 or (value == 0.0 and not low_ok):
        raise DecodeError("bad lease")
    return value


def _bool(value: object) -> bool:
    if type(value) is not bool:
        raise DecodeError("bad flag")
    return value


def _claim_reply(f: tuple[object, ...]) -> ClaimReply:
    status = f[0]
    if type(status) is not int or status not in (CLAIM_WON, CLAIM_LOST, CLAIM_REFUSED):
        raise DecodeError("bad claim status")
    remaining = _lease(f[2], low_ok=True)
    if status == CLAIM_REFUSED:
        if f[1] is not None or remaining != 0.0:
            raise DecodeError("a refusal names no holder")
        return ClaimReply(status, None, 0.0)
    return ClaimReply(status, _provider(f[1]), remaining)


# type -> (arity, fields -> message)
_DECODERS: dict[int, tuple[int, Callable[[tuple[object, ...]], Message]]] = {
    PING: (0, lambda f: Ping()),
    PONG: (2, lambda f: Pong(_ip(f[0]), _port(f[1]))),
    FIND_NODE: (1, lambda f: FindNode(_node_id(f[0]))),
    NODES: (1, lambda f: Nodes(tuple(_contact(c) for c in _list(f[0])))),
    ADD_PROVIDER: (4, _add_provider),
    ADD_PROVIDER_ACK: (1, lambda f: AddProviderAck(_count(f[0]))),
    GET_PROVIDERS: (2, lambda f: GetProviders(_node_id(f[0]), _count(f[1]))),
    PROVIDERS: (2, _providers_reply),
    CLAIM: (5, _claim_request),
    CLAIM_ANSWER: (3, _claim_reply),
    RELEASE: (4, _release),
    RELEASED: (1, lambda f: Released(_bool(f[0]))),
    ADD_INFLIGHT: (6, _add_inflight),
    RETRY: (0, lambda f: Retry()),
}


def _unpack(data: bytes) -> tuple[object, ...]:
    if len(data) > MAX_DATAGRAM:
        raise DecodeError("oversized")
    try:
        obj = msgpack.unpackb(data, use_list=False, raw=False, strict_map_key=True)
    except msgpack.ExtraData as extra:  # padding: zero bytes only
        if extra.extra.strip(b"\0"):  # type: ignore[attr-defined]  # not in msgpack-types
            raise DecodeError("trailing bytes") from None
        obj = extra.unpacked  # type: ignore[attr-defined]
    except Exception as exc:  # msgpack raises a zoo of types for malformed input
        raise DecodeError(str(exc)) from exc
    if type(obj) is not tuple or len(obj) < 5:
        raise DecodeError("not an envelope")
    return obj


def _cookie(value: object) -> bytes | None:
    if value is None:
        return None
    if type(value) is not bytes or len(value) != COOKIE_SIZE:
        raise DecodeError("bad cookie")
    return value


def decode(data: bytes) -> Envelope:
    """Decode and validate one datagram payload; anything else raises DecodeError."""
    obj = _unpack(data)
    version, kind, request_id, sender = obj[0], obj[1], obj[2], obj[3]
    if version != VERSION or type(version) is not int:
        raise DecodeError("unknown version")
    decoder = _DECODERS.get(kind) if type(kind) is int else None
    if decoder is None or len(obj) != 5 + decoder[0]:
        raise DecodeError("unknown type or wrong arity")
    if type(request_id) is not int or not 0 <= request_id < 1 << 64:
        raise DecodeError("bad request id")
    cookie = _cookie(obj[4])
    message = decoder[1](obj[5:])
    if cookie is None and kind == RETRY:
        raise DecodeError("a retry carries a cookie")
    return Envelope(request_id, _node_id(sender), message, cookie)
