"""What the node reads from disk: its id and the cluster key (the core does no file I/O)."""

from __future__ import annotations

import os
from pathlib import Path

from .ids import ID_BYTES

NODE_ID_FILE = "dht-node-id"


def random_node_id() -> bytes:
    return os.urandom(ID_BYTES)


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


def load_cluster_key(path: Path) -> bytes:
    """Read a cluster key file; surrounding whitespace is not part of the key."""
    key = path.read_bytes().strip()
    if not key:
        raise ValueError(f"cluster key file {path} is empty")
    return key
