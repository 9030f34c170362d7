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


def _size(n: int) -> str:
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} B"


def _short(reference: str) -> str:
    """A digest as its first 12 hex digits (as docker shows image IDs); a tag as it is."""
    algorithm, _, hex_digits = reference.partition(":")
    if algorithm == "sha256" and len(hex_digits) > 12:
        return f"{hex_digits[:12]}…"
    return reference


def format_event(node: str, event: dict[str, Any]) -> str:
    """One line, about 100 columns: when, which node, how it was answered, what,
    how big and fast, and from (or to) whom."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    separator = "@" if ":" in event["reference"] else ":"
    image = f"{event['repository']}{separator}{_short(event['reference'])}"
    if event["registry"]:
        image = f"{event['registry']}/{image}"
    if event["cache"] == "served":
        where = f"to {event['peer']}" if event.get("peer") else "to a peer"
    elif event["source"] == "peer":
        where = f"from {event['peer']}"
    else:
        where = f"from {event['source'] or 'nowhere'}"
    head = " HEAD" if event["method"] == "HEAD" else ""
    status = "" if 200 <= event["status"] < 300 else f" {event['status']}"
    return (
        f"{stamp} {node} {event['cache']} {event['kind']}{head} {image} "
        f"{_size(event['bytes'])} {event['duration'] * 1000:.0f}ms{status} {where}"
    )


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
                while True:
                    message = json.loads(await ws.get_message())
                    if message.get("type") == "stats" and not connected:
                        connected = True
                        node_id = message["stats"]["node_id"]
                        emit(_note(label, f"connected to node {node_id}"))
                    elif message.get("type") == "events":
                        if message.get("dropped"):
                            emit(_note(label, f"{message['dropped']} events skipped (too slow)"))
                        for event in message["events"]:
                            emit(format_event(label, event))
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
