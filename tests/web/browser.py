"""Headless Chromium driven over the Chrome DevTools Protocol (trio-websocket + JSON).

The browser gets a fresh profile and every switch that keeps it off the network
on its own; it only ever loads what a test points it at.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

START_SECONDS = 20.0  # for the browser to write its DevTools port
WAIT_FOR_SECONDS = 15.0  # for a page expression to become truthy

QUIET_SWITCHES = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    "--no-proxy-server",
    "--disable-features=OptimizationHints,MediaRouter,Translate",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


# The page's width against the viewport's, and every table wider than its box
# (`.scroll` lets a table scroll inside the page rather than widen it).
OVERFLOW = """(() => ({
  page: document.documentElement.scrollWidth,
  viewport: document.documentElement.clientWidth,
  tables: [...document.querySelectorAll('.scroll')]
    .filter((box) => box.scrollWidth > box.clientWidth)
    .map((box) => `${box.firstElementChild.id || box.firstElementChild.className}: `
      + `${box.scrollWidth} > ${box.clientWidth}`),
}))()"""


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(RuntimeError):
    pass


class Page:
    """One tab, attached with a flat session on the browser's websocket."""

    def __init__(self, ws: WebSocketConnection, session: str | None = None) -> None:
        self._ws = ws
        self._session = session
        self._next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        await self._ws.send_message(json.dumps(message))
        while True:
            reply = json.loads(await self._ws.get_message())
            if reply.get("id") != self._next_id or reply.get("sessionId") != self._session:
                continue  # an event, or another session's reply
            if "error" in reply:
                raise CdpError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """Poll `expression` until it is truthy; its last value in the error otherwise.

        Gives up at the caller's deadline (a little before, to say why), else after
        WAIT_FOR_SECONDS.
        """
        value: Any = None
        outer = trio.current_effective_deadline()
        give_up = outer - 0.2 if outer != math.inf else trio.current_time() + WAIT_FOR_SECONDS
        with trio.move_on_at(give_up):
            while True:
                try:
                    value = await self.evaluate(expression)
                except CdpError as exc:  # e.g. the page is still loading
                    value = exc
                if value and not isinstance(value, CdpError):
                    return value
                await trio.sleep(0.1)
        raise AssertionError(f"{expression!r} still {value!r} when giving up")

    async def resize(self, width: int, height: int = 1100) -> None:
        """Lay the page out again for a viewport of `width` x `height` CSS pixels."""
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def overflow(self) -> dict[str, Any]:
        """What runs past the viewport's width: the page, and any table in its box."""
        value = await self.evaluate(OVERFLOW)
        assert isinstance(value, dict)
        return value

    async def screenshot(self, path: Path) -> None:
        result = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        target = trio.Path(path)
        await target.parent.mkdir(parents=True, exist_ok=True)
        await target.write_bytes(base64.b64decode(result["data"]))


def _start(binary: str, profile: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [binary, *QUIET_SWITCHES, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its renderers share its process group
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftover renderers of this browser only


@contextlib.asynccontextmanager
async def open_page(width: int = 1400, height: int = 1100) -> AsyncIterator[Page]:
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp:
        profile = Path(tmp) / "profile"
        proc = _start(binary, profile, Path(tmp) / "chromium.log")
        try:
            active = profile / "DevToolsActivePort"
            deadline = time.monotonic() + START_SECONDS
            while not (active.is_file() and len(active.read_text().splitlines()) >= 2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (Path(tmp) / "chromium.log").read_text(errors="replace")
                    raise RuntimeError(f"chromium did not start:\n{log[-2000:]}")
                await trio.sleep(0.05)
            port, path = active.read_text().splitlines()[:2]
            async with open_websocket_url(
                f"ws://127.0.0.1:{port}{path}", max_message_size=64 * 1024 * 1024
            ) as ws:
                browser = Page(ws)
                target = await browser.call("Target.createTarget", url="about:blank")
                attached = await browser.call(
                    "Target.attachToTarget", targetId=target["targetId"], flatten=True
                )
                page = Page(ws, attached["sessionId"])
                await page.resize(width, height)
                yield page
        finally:
            _stop(proc)
