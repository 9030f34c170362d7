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
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

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
    return reference[:19] + "…" if reference.startswith("sha256:") else reference


def format_event(node: str, event: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    separator = "@" if ":" in event["reference"] else ":"
    image = f"{event['repository']}{separator}{_short(event['reference'])}"
    if event["registry"]:
        image = f"{event['registry']}/{image}"
    if event["cache"] == "served":
        where = "to a peer"
    elif event["source"] == "peer":
        where = f"from {event['peer']}"
    else:
        where = f"from {event['source'] or 'nowhere'}"
    return (
        f"{stamp} {node} {event['cache']:<6} {event['method']:<4} {event['kind']:<8} {image} "
        f"{where} {event['status']} {_size(event['bytes'])} {event['duration'] * 1000:.1f} ms"
    )


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
                reason = type(exc).__name__ if not str(exc) else str(exc)
                emit(_note(label, f"disconnected ({reason}); reconnecting"))
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
