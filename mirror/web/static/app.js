// The debug page: live over a WebSocket, polling /debug/web/stats while it is down.
// Everything from the server is inserted as text, never as HTML.
"use strict";

const BASE = "/debug/web";
const MAX_EVENTS = 100;
const POLL_MS = 2000;

const state = {
  stats: null,
  statsAt: 0, // Date.now() when `stats` arrived, to age "now" on the client
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

function fill(tbody, rows, emptyText, columns) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    tbody.append(el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText)));
    return;
  }
  for (const row of rows) tbody.append(row);
}

// -- state from the server --------------------------------------------------

function applyStats(stats) {
  state.stats = stats;
  state.statsAt = Date.now();
  $("node-id").textContent = stats.node_id;
  $("addr-registry").textContent = stats.addresses.registry.join(", ") || "—";
  $("addr-router").textContent = stats.addresses.router;
  $("addr-metrics").textContent = stats.addresses.metrics.join(", ") || location.host;
  $("count-images").textContent = stats.counts.images;
  $("count-keys").textContent = stats.counts.keys;
  $("count-peers").textContent = stats.counts.peers;
  $("count-hits").textContent = stats.requests.hit;
  $("count-misses").textContent = stats.requests.miss;
  renderLastSuccess();
  fill(
    $("peers").tBodies[0],
    stats.peers.map((p) =>
      el("tr", {}, el("td", { title: p.node_id }, el("code", {}, p.node_id.slice(0, 16) + "…")),
        el("td", {}, p.address))),
    "no peers yet",
    2,
  );
  fill(
    $("images").tBodies[0],
    stats.images.map((image) =>
      el("tr", {},
        el("td", {}, `${image.registry}/${image.repository}`),
        el("td", {}, image.tag || "—"),
        el("td", { title: image.digest }, el("code", {}, shortDigest(image.digest || "—"))))),
    "no images advertised",
    3,
  );
  renderDownloads(stats.coldstart);
  if (stats.events && stats.events.length) addEvents(stats.events, 0);
}

function renderDownloads(coldstart) {
  const body = $("downloads").tBodies[0];
  if (!coldstart) {
    fill(body, [], "cold start is off on this node (--cold-start=false)", 5);
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
    5,
  );
  $("downloads-note").textContent = coldstart.refused
    ? `(${coldstart.refused} peer requests sent elsewhere: stream cap reached)`
    : "";
}

function renderLastSuccess() {
  const target = $("last-success");
  const stats = state.stats;
  if (!stats || stats.last_success === null) {
    target.textContent = "Pending";
    target.classList.add("pending");
    return;
  }
  const now = stats.now + (Date.now() - state.statsAt) / 1000;
  target.textContent = `${formatDuration(now - stats.last_success)} ago`;
  target.classList.remove("pending");
}

function addEvents(events, dropped) {
  for (const event of events) state.events.set(event.seq, event);
  state.dropped += dropped || 0;
  const seqs = [...state.events.keys()].sort((a, b) => b - a);
  for (const seq of seqs.slice(MAX_EVENTS)) state.events.delete(seq);
  const rows = seqs.slice(0, MAX_EVENTS).map((seq) => eventRow(state.events.get(seq)));
  fill($("events").tBodies[0], rows, "no mirror events yet", 9);
  $("events-note").textContent = state.dropped
    ? `(${state.dropped} skipped while this page fell behind)`
    : "";
}

function eventRow(e) {
  const time = new Date(e.time * 1000).toLocaleTimeString([], { hour12: false });
  const from = e.cache === "served"
    ? (e.source === "inflight" ? "to a peer, while downloading" : "to a peer")
    : e.source === "peer" ? e.peer : e.source || "—";
  const image = e.registry ? `${e.registry}/${e.repository}` : e.repository;
  return el("tr", {},
    el("td", {}, time),
    el("td", {}, el("span", { class: `tag ${e.cache}` }, e.cache)),
    el("td", {}, `${e.method} ${e.kind}`),
    el("td", {}, image),
    el("td", { title: e.reference }, el("code", {}, shortDigest(e.reference))),
    el("td", {}, from),
    el("td", {}, e.status),
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
    else if (data.type === "events") addEvents(data.events, data.dropped);
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

function renderMeasurement(out, result) {
  out.replaceChildren();
  out.append(el("p", { class: "muted" },
    `${result.image.reference} · platform ${result.platform} · ${formatSeconds(result.seconds)} in all`));
  if (result.error) out.append(el("p", { class: "error" }, result.error));

  const lookupRows = [];
  for (const lookup of result.lookups) {
    const peers = lookup.peers.length
      ? lookup.peers.map((p) => `${p.address}${p.self ? " (this node)" : ""} in ${formatSeconds(p.seconds)}`)
        .join(", ")
      : "no peer found";
    lookupRows.push(el("tr", {},
      el("td", { title: lookup.key }, el("code", {}, shortDigest(lookup.key))),
      el("td", { class: "num" }, lookup.peers.length),
      el("td", {}, peers),
      el("td", { class: "num" }, formatSeconds(lookup.seconds))));
  }
  const lookups = el("table", { class: "lookups" },
    el("thead", {}, el("tr", {}, el("th", {}, "key"), el("th", { class: "num" }, "peers"),
      el("th", {}, "found"), el("th", { class: "num" }, "lookup"))),
    el("tbody", {}));
  fill(lookups.tBodies[0], lookupRows, "no lookup ran", 4);
  out.append(el("h3", {}, "Lookup"), lookups);

  const pull = result.pull;
  const pullRows = pull.items.map((item) => el("tr", {},
    el("td", {}, item.kind),
    el("td", { title: item.digest }, el("code", {}, shortDigest(item.digest))),
    el("td", {}, item.media_type),
    el("td", {}, item.source),
    el("td", { class: "num" }, formatBytes(item.size)),
    el("td", { class: "num" }, formatSeconds(item.seconds))));
  const items = el("table", { class: "pull" },
    el("thead", {}, el("tr", {}, el("th", {}, "item"), el("th", {}, "digest"), el("th", {}, "media type"),
      el("th", {}, "from"), el("th", { class: "num" }, "size"), el("th", { class: "num" }, "duration"))),
    el("tbody", {}));
  fill(items.tBodies[0], pullRows, "nothing pulled", 6);
  out.append(el("h3", {}, "Pull"), items);
  if (pull.error) out.append(el("p", { class: "error" }, `pull failed: ${pull.error}`));
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
