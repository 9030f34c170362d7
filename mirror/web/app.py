"""The quart-trio app on `--metrics-addr`: `/metrics`, and the debug page under `/debug/web/`.

It shares no code path with the registry port: it reads the node's state and
follows the telemetry feed, nothing more. `debug_web=False` leaves `/metrics` only.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response, redirect, request, websocket
from quart_trio import QuartTrio

from mirror.version import VERSION
from mirror.web.measure import InvalidReference, measure, parse_reference
from mirror.web.stats import event_json, snapshot
from mirror.web.view import NodeView

log = logging.getLogger("mirror.web")

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The websocket sends at most one batch of events per interval, so a burst of
# requests costs one message, and at most this many events per batch.
BATCH_INTERVAL = 0.1
MAX_BATCH = 200
STATS_INTERVAL = 2.0
# Bodies being sent, with bytes so far: read from the kernel this often while any run.
TRANSFERS_INTERVAL = 1.0
MAX_TRANSFERS = 50
MAX_MEASURE_LIMIT = 300.0
# Measurements at once: each pulls a whole image through the registry port.
MAX_MEASUREMENTS = 1


def load_assets() -> dict[str, tuple[bytes, str]]:
    assets = {}
    for entry in resources.files("mirror.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if suffix in STATIC_TYPES:
            assets[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return assets


def _json_response(document: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(document), status=status, content_type="application/json; charset=utf-8"
    )


def create_app(view: NodeView, *, debug_web: bool = True, measure_limit: float = 30.0) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(view.telemetry.exposition(), content_type=CONTENT_TYPE_LATEST)

    if debug_web:
        _add_debug_routes(app, view, measure_limit)
    return app


def _add_debug_routes(app: QuartTrio, view: NodeView, measure_limit: float) -> None:
    _add_page_routes(app, view)
    _add_measure_route(app, view, measure_limit)
    _add_live_route(app, view)


def _add_page_routes(app: QuartTrio, view: NodeView) -> None:
    assets = load_assets()

    @app.get("/debug/web")
    async def no_slash() -> Any:
        return redirect("/debug/web/")

    @app.get("/debug/web/")
    async def index() -> Response:
        body, content_type = assets["index.html"]
        return Response(body, content_type=content_type)

    @app.get("/debug/web/static/<name>")
    async def static_asset(name: str) -> Response:
        if name not in assets:
            return _json_response({"error": f"no asset {name!r}"}, 404)
        body, content_type = assets[name]
        return Response(body, content_type=content_type, headers={"Cache-Control": "no-cache"})

    @app.get("/debug/web/stats")
    async def stats() -> Response:
        return _json_response(await snapshot(view))

    @app.get("/debug/web/metadata")
    async def metadata() -> Response:
        return _json_response(
            {
                "node_id": view.dht.node_id.hex(),
                "router": "{}:{}".format(*view.dht.address),
                "registry": [f"{h}:{p}" for h, p in view.registry.addresses],
                "version": VERSION,
            }
        )


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a browser's `Origin` names the host it asks (no Origin: not a browser).

    A page on another site may send requests here (and read a WebSocket: no CORS
    for those); its Origin gives it away. A page served from this port, or through
    a proxy that keeps the Host header, passes.
    """
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == (host or "").lower()


def _add_measure_route(app: QuartTrio, view: NodeView, measure_limit: float) -> None:
    running = 0

    @app.post("/debug/web/measure")
    async def measure_pull() -> Response:
        nonlocal running
        # JSON only: a cross-site form or a `text/plain` fetch can then never start
        # pulls here (a JSON fetch from another site needs a CORS preflight, which
        # this app never grants).
        if request.mimetype != "application/json":
            return _json_response(
                {"error": "send Content-Type: application/json", "type": request.mimetype}, 415
            )
        if not same_origin(request.headers.get("Origin"), request.headers.get("Host")):
            return _json_response({"error": "cross-site request refused"}, 403)
        document = await request.get_json(silent=True)
        if not isinstance(document, dict):
            return _json_response({"error": 'send a JSON object: {"image": "<reference>"}'}, 400)
        limit = document.get("time_limit", measure_limit)
        if not isinstance(limit, (int, float)) or not 0 < limit <= MAX_MEASURE_LIMIT:
            return _json_response(
                {"error": f"time_limit must be a number of seconds in (0, {MAX_MEASURE_LIMIT:g}]"},
                400,
            )
        try:
            parse_reference(document.get("image"))
        except InvalidReference as exc:
            return _json_response({"error": f"invalid image reference: {exc}"}, 400)
        if running >= MAX_MEASUREMENTS:
            return _json_response(
                {"error": "a measurement is already running on this node; try again when it ends"},
                429,
            )
        running += 1
        try:
            result = await measure(
                document.get("image"),
                find=view.dht.get_providers,
                is_self=lambda provider: provider.node_id == view.dht.node_id,
                registry_endpoint=view.registry_endpoint(),
                time_limit=float(limit),
                authorization=view.registry_authorization,
            )
        finally:
            running -= 1
        return _json_response(result)


def _add_live_route(app: QuartTrio, view: NodeView) -> None:
    @app.websocket("/debug/web/ws")
    async def live() -> Response | None:
        if not same_origin(websocket.headers.get("Origin"), websocket.headers.get("Host")):
            return _json_response({"error": "cross-site WebSocket refused"}, 403)
        await websocket.accept()
        telemetry = view.telemetry
        feed = telemetry.feed
        cursor = feed.published
        await websocket.send(json.dumps({"type": "stats", "stats": await snapshot(view)}))
        now = trio.current_time()
        next_stats = now + STATS_INTERVAL
        next_transfers = now + TRANSFERS_INTERVAL
        showing_transfers = False
        while True:
            with trio.move_on_at(min(next_stats, next_transfers)):
                await feed.wait(cursor)
                await trio.sleep(BATCH_INTERVAL)
            batch = feed.since(cursor, MAX_BATCH)
            cursor = batch.cursor
            if batch.events or batch.dropped:
                # The counters as of these events: the page's cards move with the feed.
                message = {
                    "type": "events",
                    "events": [event_json(seq, event) for seq, event in batch.events],
                    "dropped": batch.dropped,
                    "requests": telemetry.summary(),
                    "now": time.time(),
                }
                await websocket.send(json.dumps(message))
            if trio.current_time() >= next_transfers:
                transfers = telemetry.transfers.snapshot(MAX_TRANSFERS)
                if transfers or showing_transfers:  # once more when the last one ended
                    await websocket.send(json.dumps({"type": "transfers", "transfers": transfers}))
                showing_transfers = bool(transfers)
                next_transfers = trio.current_time() + TRANSFERS_INTERVAL
            if trio.current_time() >= next_stats:
                stats = await snapshot(view, events=0)
                await websocket.send(json.dumps({"type": "stats", "stats": stats}))
                next_stats = trio.current_time() + STATS_INTERVAL
