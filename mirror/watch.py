"""`mirror watch URL...`: follow one or several nodes' live mirror events in the terminal.

One line per event, from each node's `/debug/web/ws` feed. A node that goes
away (a restart, a rollout) is reconnected to with a capped backoff; the other
nodes keep streaming meanwhile.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, open_websocket_url

FEED_PATH = "/debug/web/ws"
MIB = 1024 * 1024


def feed_url(node: str) -> str:
    """`http://127.0.0.1:9090` (or `127.0.0.1:9090`) -> `ws://127.0.0.1:9090/debug/web/ws`."""
    parts = urlsplit(node if "://" in node else f"http://{node}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"not a node URL: {node!r} (expected http://host:port)")
    path = parts.path.rstrip("/")
    if not path.endswith(FEED_PATH):
        path += FEED_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


_UNITS = ((1024 * MIB, "GiB"), (MIB, "MiB"), (1024, "KiB"))


def _unit(n: float) -> tuple[int, str]:
    """The unit `n` bytes are best shown in, and its size."""
    return next(((size, name) for size, name in _UNITS if n >= size), (1, "B"))


def _size(n: float) -> str:
    scale, unit = _unit(n)
    return f"{n:.0f} B" if scale == 1 else f"{n / scale:.1f} {unit}"


def _short(reference: str) -> str:
    """A digest as its first 12 hex digits (as docker shows image IDs); a tag as it is."""
    algorithm, _, hex_digits = reference.partition(":")
    if algorithm == "sha256" and len(hex_digits) > 12:
        return f"{hex_digits[:12]}…"
    return reference


def _image(item: dict[str, Any]) -> str:
    separator = "@" if ":" in item["reference"] else ":"
    image = f"{item['repository']}{separator}{_short(item['reference'])}"
    return f"{item['registry']}/{image}" if item["registry"] else image


def _client(item: dict[str, Any]) -> str:
    """Who asked; a node of an older version says only `cache` ("served": a peer)."""
    client = item.get("client")
    if client is None:
        return "peer" if item.get("cache") == "served" else "containerd"
    return str(client)


def _where(item: dict[str, Any]) -> str:
    """From whom, or to whom: the peer served (its address), the peer that served."""
    if _client(item) == "peer":
        return f"to {item['peer'] or 'a peer'}"
    if item["source"] == "peer":
        return f"from {item['peer']}"
    if item["source"] in ("local", "inflight"):
        return "from this node"
    return "from nowhere"


def format_event(node: str, event: dict[str, Any]) -> str:
    """One line, about 100 columns: when, which node, how it was answered, what,
    how big and fast, and from (or to) whom."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    result, client = event.get("result") or event["cache"], _client(event)
    if client == "peer" and result == "local":
        result = "served"
    elif client == "measure":
        result = f"measure:{result}"
    head = " HEAD" if event["method"] == "HEAD" else ""
    status = "" if 200 <= event["status"] < 300 else f" {event['status']}"
    return (
        f"{stamp} {node} {result} {event['kind']}{head} {_image(event)} "
        f"{_size(event['bytes'])} {event['duration'] * 1000:.0f}ms{status} {_where(event)}"
    )


def format_transfer(node: str, transfer: dict[str, Any]) -> str:
    """A body still being sent: how far along, how fast, to (or from) whom:
    `14:02:21 127.0.0.2:9090 50% docker.io/team/app@3f9a0c1d2e4b… 2.0 of 4.0 GiB
    170.7 MiB/s to 127.0.0.3` (on one line)."""
    stamp = time.strftime("%H:%M:%S")
    sent, length, seconds = transfer["bytes"], transfer["length"], transfer["seconds"]
    if sent is None:
        progress = f"?% {_image(transfer)} ? of {_size(length)}"
    else:
        scale, _ = _unit(length)
        done = str(sent) if scale == 1 else f"{sent / scale:.1f}"
        rate = f" {_size(sent / seconds)}/s" if seconds > 0 else ""
        share = 100 * sent // max(length, 1)
        progress = f"{share}% {_image(transfer)} {done} of {_size(length)}{rate}"
    return f"{stamp} {node} {progress} {_where(transfer)}"


class ProgressLines:
    """Which transfers in progress get a line now: those sent for PROGRESS_EVERY seconds
    already, once every PROGRESS_EVERY seconds each (pure: `now` is given)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[int, float] = {}

    def due(self, transfers: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        live = {transfer["id"] for transfer in transfers}
        self._last = {key: at for key, at in self._last.items() if key in live}
        lines = []
        for transfer in transfers:
            last = self._last.get(transfer["id"])
            if last is None and transfer["seconds"] < self.every:
                continue
            if last is not None and now - last < self.every:
                continue
            self._last[transfer["id"]] = now
            lines.append(transfer)
        return lines


def disconnect_reason(exc: BaseException) -> str:
    """Why a node's feed could not be followed, in words an operator can act on."""
    if isinstance(exc, ConnectionRejected):
        return (
            f"HTTP {exc.status_code} instead of the feed: not a mirror's metrics port "
            "(--metrics-addr, default :9090), or its debug page is off (--debug-web-enabled)"
        )
    if isinstance(exc, HandshakeError):
        cause = exc.__cause__ or exc.__context__
        return f"cannot connect: {cause}" if cause else "the WebSocket handshake failed"
    if isinstance(exc, ConnectionClosed):
        return "the node closed the feed"
    if isinstance(exc, ValueError | KeyError):
        return "not a mirror's debug feed (an unexpected message)"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or exc}"
    return type(exc).__name__


def feed_lines(
    node: str, message: dict[str, Any], progress: ProgressLines, now: float
) -> list[str]:
    """The lines a message of the feed makes: its events, the transfers due a line."""
    if message.get("type") == "events":
        lines = [format_event(node, event) for event in message["events"]]
        if message.get("dropped"):
            lines.insert(0, _note(node, f"{message['dropped']} events skipped (too slow)"))
        return lines
    if message.get("type") == "transfers":
        return [format_transfer(node, t) for t in progress.due(message["transfers"], now)]
    return []


def _note(node: str, text: str) -> str:
    return f"{time.strftime('%H:%M:%S')} {node} -- {text}"


async def follow(
    node: str,
    out: TextIO,
    *,
    min_backoff: float = 0.5,
    max_backoff: float = 5.0,
    connect_timeout: float = 5.0,
) -> None:
    url = feed_url(node)
    label = urlsplit(url).netloc
    backoff = min_backoff
    announced_down = False

    def emit(line: str) -> None:
        print(line, file=out, flush=True)

    while True:
        try:
            async with open_websocket_url(
                url, connect_timeout=connect_timeout, disconnect_timeout=1.0
            ) as ws:
                backoff = min_backoff
                announced_down = False
                connected = False
                progress = ProgressLines()
                while True:
                    message = json.loads(await ws.get_message())
                    if message.get("type") == "stats" and not connected:
                        connected = True
                        node_id = message["stats"]["node_id"]
                        emit(_note(label, f"connected to node {node_id}"))
                    else:
                        for line in feed_lines(label, message, progress, trio.current_time()):
                            emit(line)
        except (ConnectionClosed, HandshakeError, OSError, ValueError, KeyError) as exc:
            if not announced_down:
                emit(_note(label, f"{disconnect_reason(exc)}; trying again"))
                announced_down = True
        await trio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)


async def run_watch(nodes: Sequence[str], out: TextIO = sys.stdout) -> int:
    try:
        for node in nodes:
            feed_url(node)
    except ValueError as exc:
        print(f"mirror watch: {exc}", file=sys.stderr)
        return 2
    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(follow, node, out)
    return 0
