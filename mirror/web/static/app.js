// The debug page: live over a WebSocket, polling /debug/web/stats while it is down.
// Everything from the server is inserted as text, never as HTML.
"use strict";

const BASE = "/debug/web";
const MAX_EVENTS = 100;
const POLL_MS = 2000;

const state = {
  stats: null,
  requests: null, // the cards' counters, from the latest stats or batch of events
  serverNow: 0, // the node's clock when `requests` arrived ...
  localNow: 0, // ... and ours, to age "Last Mirror Success" in between
  peersById: new Map(), // node id -> peer row, to name the peers in other tables
  events: new Map(), // seq -> event
  dropped: 0,
  socket: null,
  retryMs: 1000,
  pollTimer: null,
};

function $(id) {
  return document.getElementById(id);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function formatDuration(seconds) {
  let s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (h > 0) return `${h}h${m}m`;
  if (m > 0) return `${m}m${s}s`;
  return `${s}s`;
}

function formatSeconds(seconds) {
  if (seconds < 1) return `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms`;
  return `${seconds.toFixed(2)} s`;
}

function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function shortDigest(text) {
  return text.startsWith("sha256:") ? text.slice(0, 19) + "…" : text;
}

function shortId(nodeId) {
  return nodeId.slice(0, 12) + "…";
}

// Rows into a table's body; every cell gets its column's name, which narrow screens
// show in front of the value (the table is then a list of blocks: style.css).
function fill(tbody, rows, emptyText) {
  const headers = [...tbody.parentElement.tHead.rows[0].cells].map((cell) => cell.textContent);
  tbody.replaceChildren();
  if (rows.length === 0) {
    tbody.append(el("tr", {}, el("td", { class: "empty", colspan: headers.length }, emptyText)));
    return;
  }
  for (const row of rows) {
    [...row.cells].forEach((cell, index) => cell.setAttribute("data-label", headers[index] || ""));
    tbody.append(row);
  }
}

function table(className, headers, rows, emptyText) {
  const head = el("tr", {}, ...headers.map(([text, cls]) => el("th", cls ? { class: cls } : {}, text)));
  const node = el("table", { class: className }, el("thead", {}, head), el("tbody", {}));
  fill(node.tBodies[0], rows, emptyText);
  return el("div", { class: "scroll" }, node);
}

// -- state from the server --------------------------------------------------

function applyStats(stats) {
  state.stats = stats;
  $("node-id").textContent = stats.node_id;
  $("addr-registry").textContent = stats.addresses.registry.join(", ") || "—";
  $("addr-router").textContent = stats.addresses.router;
  $("addr-metrics").textContent = stats.addresses.metrics.join(", ") || location.host;
  $("count-images").textContent = stats.counts.images;
  $("count-keys").textContent = stats.counts.keys;
  $("count-peers").textContent = stats.counts.peers;
  applyRequests(stats.requests, stats.now);
  state.peersById = new Map(stats.peers.map((p) => [p.node_id, p]));
  fill(
    $("peers").tBodies[0],
    stats.peers.map((p) =>
      el("tr", {},
        el("td", { title: p.node_id }, el("code", {}, shortId(p.node_id))),
        el("td", {}, p.router),
        el("td", { title: p.registry ? "" : "not named by a lookup yet" }, p.registry || "—"))),
    "no peers yet",
  );
  fill(
    $("images").tBodies[0],
    stats.images.map((image) =>
      el("tr", {},
        el("td", { class: "wrap" }, `${image.registry}/${image.repository}`),
        el("td", {}, image.tag || "—"),
        el("td", { title: image.digest }, el("code", {}, shortDigest(image.digest || "—"))))),
    "no images advertised",
  );
  renderDownloads(stats.coldstart);
  renderTransfers(stats.transfers || []);
  if (stats.events && stats.events.length) addEvents(stats.events, 0);
}

// The cards: from the stats, and from every batch of the live feed (so they move
// with the events they count).
function applyRequests(requests, serverNow) {
  if (!requests) return;
  state.requests = requests;
  state.serverNow = serverNow;
  state.localNow = Date.now();
  $("count-hits").textContent = requests.hit;
  $("count-misses").textContent = requests.miss;
  $("count-local").textContent = requests.local;
  $("count-served").textContent = requests.served;
  $("bytes-served").textContent = `${formatBytes(requests.bytes_to_peers)} sent`;
  $("measure-note").textContent = requests.measure
    ? `(its ${requests.measure} requests are counted apart from containerd's)`
    : "";
  renderLastSuccess();
}

function renderLastSuccess() {
  const target = $("last-success");
  const requests = state.requests;
  if (!requests || requests.last_success === null) {
    target.textContent = "Pending";
    target.classList.add("pending");
    return;
  }
  const now = state.serverNow + (Date.now() - state.localNow) / 1000;
  target.textContent = `${formatDuration(now - requests.last_success)} ago`;
  target.classList.remove("pending");
}

function renderDownloads(coldstart) {
  const body = $("downloads").tBodies[0];
  if (!coldstart) {
    fill(body, [], "cold start is off on this node (--cold-start=false)");
    return;
  }
  fill(
    body,
    coldstart.downloads.map((d) =>
      el("tr", {},
        el("td", { title: d.digest }, el("code", {}, shortDigest(d.digest))),
        el("td", { class: "num" },
          d.total ? `${Math.floor((100 * d.size) / d.total)}% (${formatBytes(d.size)})` : "—"),
        el("td", { class: "num" }, formatBytes(d.total)),
        el("td", { class: "num" }, d.peer_streams),
        el("td", {}, d.claimed ? "this node, for the cluster" : "—"))),
    "no download in progress",
  );
  $("downloads-note").textContent = coldstart.refused
    ? `(${coldstart.refused} peer requests sent elsewhere: stream cap reached)`
    : "";
}

// A peer's address, with its node id when the peer table knows the host.
function peerName(address) {
  if (!address) return "";
  const host = address.startsWith("[") ? address.slice(1, address.indexOf("]")) : address.split(":")[0];
  for (const peer of state.peersById.values()) {
    if (peer.registry === address || peer.router.split(":")[0] === host) {
      return `${address} (${shortId(peer.node_id)})`;
    }
  }
  return address;
}

function direction(item) {
  const to = item.client === "peer"
    ? `peer ${peerName(item.peer)}`
    : item.client === "measure" ? "Measure" : "containerd";
  let from = "this node";
  if (item.source === "peer") from = `peer ${peerName(item.peer)}`;
  else if (item.source === "inflight") from = "this node, while downloading";
  return `${from} → ${to}`;
}

function imageName(item) {
  return item.registry ? `${item.registry}/${item.repository}` : item.repository;
}

function renderTransfers(transfers) {
  fill(
    $("transfers").tBodies[0],
    transfers.map((t) => {
      const known = t.bytes !== null;
      const share = known && t.length ? t.bytes / t.length : 0;
      const bar = el("div", { class: "bar" }, el("div", { style: `width: ${(100 * share).toFixed(1)}%` }));
      const words = known
        ? `${formatBytes(t.bytes)} of ${formatBytes(t.length)} (${Math.floor(100 * share)}%)`
        : `${formatBytes(t.length)}, progress unknown`;
      return el("tr", {},
        el("td", { class: "wrap", title: t.reference },
          `${t.kind} ${imageName(t)} `, el("code", {}, shortDigest(t.reference))),
        el("td", { class: "wrap" }, direction(t)),
        el("td", { class: "progress" }, bar, el("span", {}, words)),
        el("td", { class: "num" }, known && t.seconds > 0 ? `${formatBytes(t.bytes / t.seconds)}/s` : "—"),
        el("td", { class: "num" }, formatDuration(t.seconds)));
    }),
    "no body being sent now",
  );
}

function addEvents(events, dropped) {
  for (const event of events) state.events.set(event.seq, event);
  state.dropped += dropped || 0;
  const seqs = [...state.events.keys()].sort((a, b) => b - a);
  for (const seq of seqs.slice(MAX_EVENTS)) state.events.delete(seq);
  const rows = seqs.slice(0, MAX_EVENTS).map((seq) => eventRow(state.events.get(seq)));
  fill($("events").tBodies[0], rows, "no mirror events yet");
  $("events-note").textContent = state.dropped
    ? `(${state.dropped} skipped while this page fell behind)`
    : "";
}

// What the tag says: for a peer's request "served" (this node served it), else the result.
function eventTag(e) {
  if (e.client === "peer" && e.result === "local") return "served";
  return e.result;
}

function eventPeer(e) {
  if (e.client === "peer") {
    return `to ${peerName(e.peer) || "a peer"}${e.source === "inflight" ? ", while downloading" : ""}`;
  }
  if (e.source === "peer") return `from ${peerName(e.peer)}`;
  if (e.source === "local") return "this node";
  return "—";
}

function eventRow(e) {
  const time = new Date(e.time * 1000).toLocaleTimeString([], { hour12: false });
  const tag = eventTag(e);
  const result = el("td", { class: "wrap" }, el("span", { class: `tag ${tag}` }, tag));
  if (e.status < 200 || e.status >= 300) result.append(" ", el("span", { class: "status" }, e.status));
  if (e.client === "measure") result.append(" ", el("span", { class: "tag measure" }, "measure"));
  return el("tr", {},
    el("td", {}, time),
    result,
    el("td", { class: "wrap", title: e.reference },
      el("div", {}, `${e.method} ${e.kind} ${imageName(e)}`),
      el("code", {}, shortDigest(e.reference))),
    el("td", { class: "wrap" }, eventPeer(e)),
    el("td", { class: "num" }, formatBytes(e.bytes)),
    el("td", { class: "num" }, formatSeconds(e.duration)));
}

// -- live connection, with polling as the fallback --------------------------

function setLive(mode) {
  const badge = $("live");
  badge.textContent = mode;
  badge.className = `badge ${mode}`;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}${BASE}/ws`);
  state.socket = socket;
  socket.onopen = () => {
    setLive("live");
    stopPolling();
    state.retryMs = 1000;
  };
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.type === "stats") applyStats(data.stats);
    else if (data.type === "events") {
      addEvents(data.events, data.dropped);
      applyRequests(data.requests, data.now);
    } else if (data.type === "transfers") renderTransfers(data.transfers);
  };
  socket.onclose = () => {
    state.socket = null;
    setLive("polling");
    startPolling();
    setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 15000);
  };
}

async function poll() {
  try {
    const response = await fetch(`${BASE}/stats`, { cache: "no-store" });
    if (response.ok) applyStats(await response.json());
    else setLive("offline");
  } catch (err) {
    setLive("offline");
  }
}

function startPolling() {
  if (state.pollTimer !== null) return;
  poll();
  state.pollTimer = setInterval(poll, POLL_MS);
}

function stopPolling() {
  if (state.pollTimer === null) return;
  clearInterval(state.pollTimer);
  state.pollTimer = null;
}

// -- Measure Image Pull -------------------------------------------------------

async function measure(event) {
  event.preventDefault();
  const image = $("measure-image").value.trim();
  const button = $("measure-button");
  const out = $("measure-result");
  button.disabled = true;
  out.replaceChildren(el("p", { class: "muted" }, `Measuring ${image || "(empty)"}…`));
  try {
    const response = await fetch(`${BASE}/measure`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image }),
    });
    const result = await response.json();
    if (!response.ok) out.replaceChildren(el("p", { class: "error" }, result.error));
    else renderMeasurement(out, result);
  } catch (err) {
    out.replaceChildren(el("p", { class: "error" }, `measurement failed: ${err}`));
  } finally {
    button.disabled = false;
  }
}

// One provider of a lookup: its registry address (where pulls go) and its router
// address with its node id (as the peer table lists it).
function providerText(p) {
  const who = p.self ? "this node" : shortId(p.node_id);
  return `${p.address} · router ${p.router} (${who}) in ${formatSeconds(p.seconds)}`;
}

function renderMeasurement(out, result) {
  out.replaceChildren();
  out.append(el("p", { class: "muted wrap" },
    `${result.image.reference} · platform ${result.platform} · ${formatSeconds(result.seconds)} in all`));
  if (result.error) out.append(el("p", { class: "error" }, result.error));

  const lookupRows = result.lookups.map((lookup) => el("tr", {},
    el("td", { title: lookup.key }, el("code", {}, shortDigest(lookup.key))),
    el("td", { class: "num" }, lookup.peers.length),
    el("td", { class: "wrap" }, lookup.peers.length
      ? lookup.peers.map(providerText).join("; ")
      : "no peer has it"),
    el("td", { class: "num" }, formatSeconds(lookup.seconds))));
  out.append(el("h3", {}, "Lookup"), table("lookups",
    [["key"], ["peers", "num"], ["found (registry · router)"], ["lookup", "num"]],
    lookupRows, "no lookup ran"));

  const pull = result.pull;
  const pullRows = pull.items.map((item) => el("tr", {},
    el("td", {}, item.kind),
    el("td", { title: item.digest }, el("code", {}, shortDigest(item.digest))),
    el("td", { class: "break", title: item.media_type }, item.media_type.replace(/^application\/vnd\./, "")),
    el("td", { class: "wrap" }, item.source === "local" ? "this node" : peerName(item.source)),
    el("td", { class: "num" }, formatBytes(item.size)),
    el("td", { class: "num" }, formatSeconds(item.seconds))));
  out.append(el("h3", {}, "Pull"), table("pull",
    [["item"], ["digest"], ["media type"], ["from"], ["size", "num"], ["duration", "num"]],
    pullRows, "nothing pulled"));
  if (pull.error) out.append(el("p", { class: "error", id: "measure-error" }, pull.error));
  out.append(el("p", { class: "totals", id: "measure-totals" },
    `${pull.items.length} items, ${formatBytes(pull.total_bytes)} in ${formatSeconds(pull.seconds)}` +
    ` · ${formatBytes(pull.throughput)}/s`));
}

// -- start ----------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("measure-form").addEventListener("submit", measure);
  setInterval(renderLastSuccess, 1000);
  poll();
  connect();
});
