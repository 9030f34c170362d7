"""The debug page in headless Chromium, on the in-process node (the real app and hot
path, a fake DHT, a real peer serving one blob): the cards move with the feed, a body
being sent shows its bytes so far, and nothing runs off a 420, 800 or 1280 px screen."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio

from mirror.server.io import send_all
from tests.web.browser import Page, chromium_binary, open_page
from tests.web.support import (
    GONE_DIGEST,
    PEER_HOST,
    REGISTRY,
    http,
    in_process_node,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed"),
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
LAYER = 64 * 1024 * 1024  # more than the kernel buffers between a stalled reader and us

# Each time the events table changes, what the cards said at that moment.
WATCH_CARDS = """
window.seen = [];
new MutationObserver(() => window.seen.push({
  hitRows: document.querySelectorAll('#events tbody .tag.hit').length,
  hits: document.getElementById('count-hits').textContent,
  lastSuccess: document.getElementById('last-success').textContent,
})).observe(document.querySelector('#events tbody'), { childList: true });
true
"""


def _text(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)})?.textContent"


async def _measure(page: Page, image: str) -> None:
    await page.evaluate(
        f"document.getElementById('measure-image').value = {json.dumps(image)};"
        "document.getElementById('measure-result').replaceChildren();"
        "document.getElementById('measure-form').requestSubmit(); true"
    )


async def test_the_page_follows_the_feed_and_fits_narrow_screens(tmp_path: Path) -> None:
    async with in_process_node(tmp_path, layer_sizes=(LAYER,)) as node:
        host, port = node.registry_address
        base = f"http://{host}:{port}"
        # A lookup names the gone peer's registry port: the peer table shows it by its router's.
        assert (await http(f"{base}/v2/team/app/blobs/{GONE_DIGEST}?ns={REGISTRY}")).status == 404
        with trio.fail_after(60):
            async with open_page(width=1280) as page:
                await page.call("Page.navigate", url=node.web_url + "/debug/web/")
                await page.wait_for("document.getElementById('live').textContent === 'live'")
                assert await page.evaluate(_text("#last-success")) == "Pending"
                cells = await page.wait_for(
                    "[...document.querySelectorAll('#peers tbody td')].map((td) => td.textContent)"
                )
                assert cells[1] == f"{PEER_HOST}:5001", cells
                assert cells[2].startswith(f"{PEER_HOST}:") and cells[2] != cells[1], cells

                # A blob only a peer holds, asked for as containerd would: the row and the
                # cards change in the same message.
                await page.evaluate(WATCH_CARDS)
                served = await http(base + node.image.blob_path(node.peer_blob))
                assert served.status == 200
                seen = await page.wait_for("window.seen.find((s) => s.hitRows > 0)")
                assert seen["hits"] == "1", seen
                assert seen["lastSuccess"].endswith(" ago"), seen

                # A body being sent to a peer that stopped reading: shown with its bytes so far.
                with trio.socket.socket() as reader:
                    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                    await reader.connect((host, port))
                    path = node.image.blob_path(node.image.layers[0])
                    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Spegel-Mirrored: true\r\n\r\n"
                    await send_all(reader, request.encode())
                    await reader.recv(1 << 20)
                    progress = await page.wait_for(_text("#transfers tbody td.progress"))
                    assert " of 64.0 MiB (" in progress, progress
                    what = await page.evaluate(_text("#transfers tbody tr"))
                    assert "this node → peer 127.0.0.1" in what

                    await _measure(page, node.image.name)
                    totals = await page.wait_for(_text("#measure-totals"))
                    assert totals.startswith("3 items, ")
                    for width in (1280, 800, 420):
                        await page.resize(width)
                        overflow = await page.overflow()
                        assert overflow["page"] <= overflow["viewport"], (width, overflow)
                        assert overflow["tables"] == [], (width, overflow)
                        await page.screenshot(ARTIFACTS / f"web-debug-page-{width}.png")
                    # Narrow: each row is a block, each cell named.
                    assert (
                        await page.evaluate(
                            "getComputedStyle(document.querySelector('#events thead')).display"
                        )
                        == "none"
                    )
                    label = await page.evaluate(
                        "document.querySelector('#events tbody td').getAttribute('data-label')"
                    )
                    assert label == "time"

                await _measure(page, f"{REGISTRY}/team/nobody:v1")
                error = await page.wait_for(_text("#measure-result .error"))
                assert error == "no peer has this image, and this node does not hold it"
                assert "no peer has it" in await page.evaluate(_text("#measure-result .lookups"))
