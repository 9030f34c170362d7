"""Node ids and the keyspace: 128-bit ids, XOR distance, xxh3_128 of key strings."""

from __future__ import annotations

import os
from pathlib import Path

import xxhash

ID_BYTES = 16
ID_BITS = ID_BYTES * 8
NODE_ID_FILE = "dht-node-id"


def key_id(key: str) -> bytes:
    """The keyspace position of a key (`sha256:...` digest or `registry/repo:tag`)."""
    return xxhash.xxh3_128_digest(key.encode())


def random_node_id() -> bytes:
    return os.urandom(ID_BYTES)


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


def load_or_create_node_id(data_dir: Path) -> bytes:
    """Keep the node id in `<data_dir>/dht-node-id` so that a restarted node keeps its id."""
    path = data_dir / NODE_ID_FILE
    try:
        node_id = bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        node_id = b""
    if len(node_id) == ID_BYTES:
        return node_id
    node_id = random_node_id()
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id.hex() + "\n")
    os.replace(tmp, path)
    return node_id
