"""Node ids and the keyspace: 128-bit ids, XOR distance, xxh3_128 of key strings."""

from __future__ import annotations

import xxhash

ID_BYTES = 16
ID_BITS = ID_BYTES * 8


def key_id(key: str) -> bytes:
    """The keyspace position of a key (`sha256:...` digest or `registry/repo:tag`)."""
    return xxhash.xxh3_128_digest(key.encode())


def id_to_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def int_to_id(value: int) -> bytes:
    return value.to_bytes(ID_BYTES, "big")


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(own: int, other: int) -> int:
    """Index of the k-bucket `other` falls in: the bit length of the distance, minus one.

    -1 means `other == own`.
    """
    return (own ^ other).bit_length() - 1
