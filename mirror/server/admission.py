"""Who gets a connection slot on the registry port (pure: counts in, verdicts out).

Every accepted connection is placed at once, so a full port never leaves clients
(the kubelet's probes among them) waiting unanswered in the listen backlog:

- `SERVE`: a slot, while the port holds fewer than `connections` and this client
  address fewer than `per_client`;
- `LOBBY`: past either limit, one of a few short-lived places where a single request
  is read: a probe (`/livez`, `/readyz`) is answered, anything else gets 503 with
  `Retry-After` (see `listener.py`). A full lobby makes room: a newcomer evicts the
  oldest waiting connection of its own address when that address holds
  `lobby_per_client` places, else the oldest of all. So a flood, even from the
  kubelet's own address, cannot keep a probe out: the probe is the newest, and it
  is answered as soon as its head is read;
- `REFUSE`: only with no lobby at all.

The limits come from the process's file descriptor budget (`RLIMIT_NOFILE`), read
once at start: every served connection may hold `FDS_PER_CONNECTION` descriptors
at once (its socket, and a blob file or a peer socket and a splice pipe), the lobby
one each, and a reserve stays for the rest of the process (containerd's gRPC, the
DHT, the metrics port, inotify, log files).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# A served connection's socket, plus at most a peer socket and a splice pipe (3)
# or one blob file.
FDS_PER_CONNECTION = 4
RESERVED_FDS = 192
MAX_CONNECTIONS = 16384
LOBBY = 64
LOBBY_PER_CLIENT = 8
# containerd's own pulls come from one address (the node), and so may every peer
# behind a NAT: far above what a node's parallel layer and range fetches open.
DEFAULT_CLIENT_CONNECTIONS = 1024


@dataclass(frozen=True, slots=True)
class Limits:
    connections: int
    per_client: int = DEFAULT_CLIENT_CONNECTIONS  # 0: no per-client limit
    lobby: int = LOBBY
    lobby_per_client: int = LOBBY_PER_CLIENT

    @classmethod
    def for_descriptors(cls, nofile: int, per_client: int = DEFAULT_CLIENT_CONNECTIONS) -> Limits:
        """The limits that keep the port within `nofile` descriptors."""
        spare = nofile - RESERVED_FDS - nofile // 16 - LOBBY
        connections = max(1, min(MAX_CONNECTIONS, spare // FDS_PER_CONNECTION))
        return cls(connections, per_client)


class Seat(enum.Enum):
    SERVE = "serve"
    LOBBY = "lobby"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Verdict:
    seat: Seat
    # Why not served: "client" (its address is at its limit) or "capacity" (the port is).
    reason: str = ""
    # A lobby place: its ticket, and the ticket of the waiting connection to close for it.
    ticket: int = 0
    evict: int | None = None


SERVE = Verdict(Seat.SERVE)


class Admission:
    """Counts of connections held, in total and per client address; the lobby in order."""

    __slots__ = ("_lobby", "_lobby_by", "_next_ticket", "_serving_by", "limits", "serving")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.serving = 0
        self._serving_by: dict[str, int] = {}
        # Lobby tickets, oldest first, and their client addresses.
        self._lobby: dict[int, str] = {}
        self._lobby_by: dict[str, list[int]] = {}
        self._next_ticket = 0

    @property
    def lobby(self) -> int:
        return len(self._lobby)

    def admit(self, client: str) -> Verdict:
        limits = self.limits
        held = self._serving_by.get(client, 0)
        over_client = 0 < limits.per_client <= held
        if not over_client and self.serving < limits.connections:
            self._serving_by[client] = held + 1
            self.serving += 1
            return SERVE
        reason = "client" if over_client else "capacity"
        if limits.lobby <= 0 or limits.lobby_per_client <= 0:
            return Verdict(Seat.REFUSE, reason)
        evict = None
        own = self._lobby_by.get(client)
        if own is not None and len(own) >= limits.lobby_per_client:
            evict = own[0]
        elif len(self._lobby) >= limits.lobby:
            evict = next(iter(self._lobby))
        if evict is not None:
            self.leave_lobby(evict)
        self._next_ticket += 1
        ticket = self._next_ticket
        self._lobby[ticket] = client
        self._lobby_by.setdefault(client, []).append(ticket)
        return Verdict(Seat.LOBBY, reason, ticket, evict)

    def release(self, client: str, verdict: Verdict) -> None:
        """A connection admitted with `verdict` is closed (an evicted one too: no-op)."""
        if verdict.seat is Seat.SERVE:
            self.serving -= 1
            left = self._serving_by[client] - 1
            if left:
                self._serving_by[client] = left
            else:
                del self._serving_by[client]
        elif verdict.seat is Seat.LOBBY:
            self.leave_lobby(verdict.ticket)

    def leave_lobby(self, ticket: int) -> None:
        client = self._lobby.pop(ticket, None)
        if client is None:
            return
        own = self._lobby_by[client]
        own.remove(ticket)
        if not own:
            del self._lobby_by[client]

    def held_by(self, client: str) -> int:
        return self._serving_by.get(client, 0)
