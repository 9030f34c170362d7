"""The node's settings and the snapshots it reports. Pure data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .providers import DEFAULT_INFLIGHT_TTL, DEFAULT_RECORD_TTL, DEFAULT_REPROVIDE_INTERVAL

TICKS_PER_INTERVAL = 30  # re-provide in this many small batches per interval


@dataclass(frozen=True)
class NodeConfig:
    bind_host: str = "0.0.0.0"
    bind_port: int = 5001
    registry_port: int = 5000
    data_dir: Path | None = None
    cluster_key: bytes | None = None
    k: int = 20
    alpha: int = 3
    record_ttl: float = DEFAULT_RECORD_TTL
    reprovide_interval: float = DEFAULT_REPROVIDE_INTERVAL
    request_timeout: float = 0.5
    # A lookup request unanswered this long stops holding one of the alpha slots.
    stall_timeout: float = 0.05
    advertise_host: str | None = None
    max_in_flight: int = 256
    refresh_interval: float = 10 * 60.0
    bootstrap_timeout: float = 10.0
    bootstrap_backoff: float = 0.5  # first retry delay; doubles up to bootstrap_backoff_max
    bootstrap_backoff_max: float = 30.0
    # On joining, look up a random id in each bucket farther than our nearest neighbour.
    join_refresh: bool = True
    node_id: bytes | None = None  # fixed id (tests, benchmarks); else kept in data_dir, else random
    # Validity of an in-flight provider record (re-announce progress more often than this).
    inflight_ttl: float = DEFAULT_INFLIGHT_TTL

    def __post_init__(self) -> None:
        if self.reprovide_interval * (1 + 1 / TICKS_PER_INTERVAL) >= self.record_ttl:
            raise ValueError("reprovide_interval must leave records time before they lapse")
        if self.k < 1 or self.alpha < 1:
            raise ValueError("k and alpha must be positive")


@dataclass(frozen=True)
class NodeStats:
    routing_table_size: int
    lookups: int
    datagrams_in: int
    datagrams_out: int
    dropped_malformed: int
    dropped_oversized: int
    dropped_unauthenticated: int
    dropped_replayed: int
    dropped_stale: int
    dropped_unsolicited: int
    dropped_unverified: int
    requests_sent: int
    timeouts: int
    records_stored: int
    keys_provided: int


@dataclass
class LookupStats:
    """Filled in by `get_providers(..., stats=...)` as the lookup proceeds."""

    hops: int = 0
    messages: int = 0
