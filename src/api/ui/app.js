// midasflow console. Vanilla JS, no build step: it polls the node's public JSON API (relative
// URLs, so whichever node serves the page answers) about once a second and updates the page
// in place. Every fetch failure is caught and shown in #errors: the page never throws.
"use strict";

const POLL_MS = 1000;
const EXPLAIN_EVERY = 3; // polls between scheduler explanations (it runs the planner on the PD leader)
const FETCH_TIMEOUT_MS = 4000;
const TOKEN_KEY = "midasflow.apiToken";
const RING = { cx: 160, cy: 160, outer: 128, inner: 82 };
const TWO_64 = 18446744073709551616; // 2^64 as a float: hash positions become ring fractions
const PATTERNS = ["solid", "stripes", "dots", "bars", "cross", "columns", "checks", "backslash"];

// Everything the page knows, refreshed by the polls.
const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  cluster: null,
  shards: [],
  stats: null,
  faults: null, // null until /v1/demo/faults answered 200
  faultsAvailable: undefined, // undefined: not probed yet; false: 404, the panel stays hidden
  schedulingAvailable: true,
  rates: new Map(), // shard id -> smoothed applied-log entries per second
  prevApplied: new Map(), // shard id -> [applied_index, time]
  prevRequests: null, // [requests, time] from /v1/stats
  requestRates: null,
  prevLoad: new Map(), // node id -> [ok, time]
  loadRates: new Map(),
  selectedShard: null,
  hoveredShard: null,
  errors: new Map(), // source -> message, shown in #errors
  pollCount: 0,
  sort: {
    "hot-shards": { key: "rate", dir: "desc" },
    "hot-nodes": { key: "rate", dir: "desc" },
  },
};

// ---------- small DOM helpers ----------

const $ = (sel, root = document) => root.querySelector(sel);
const SVG_NS = "http://www.w3.org/2000/svg";

/** Creates an element: h("td", {class: "num"}, "3"). Strings become text nodes (never HTML). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function s(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "style") setStyle(el, String(v));
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

/** Inline declarations through the CSSOM: the page's CSP forbids style attributes. */
function setStyle(el, declarations) {
  for (const decl of declarations.split(";")) {
    const colon = decl.indexOf(":");
    if (colon > 0) el.style.setProperty(decl.slice(0, colon).trim(), decl.slice(colon + 1).trim());
  }
}

function setText(el, text) {
  if (el && el.textContent !== String(text)) el.textContent = String(text);
}

// ---------- formatting ----------

function fmtNum(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
}

function fmtRate(r) {
  if (r === null || r === undefined) return "–";
  return r >= 100 ? Math.round(r).toLocaleString("en-US") : r.toFixed(1);
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  if (ms < 3600000) return Math.round(ms / 60000) + " min";
  return (ms / 3600000).toFixed(1) + " h";
}

function shortHex(hex) {
  return hex.length > 8 ? hex.slice(0, 6) + "…" : hex;
}

// ---------- the API ----------

/**
 * Calls the API and never throws: resolves to {ok, status, data, headers, error}. `data` is
 * parsed JSON (or an ArrayBuffer with `raw`); `error` is a sentence for people.
 */
async function api(path, { method = "GET", body, raw = false, timeout = FETCH_TIMEOUT_MS } = {}) {
  const headers = {};
  if (state.token) headers.Authorization = "Bearer " + state.token;
  if (body !== undefined && typeof body !== "string") {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/octet-stream";
  }
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeout);
  try {
    const resp = await fetch(path, { method, body, headers, signal: controller.signal, cache: "no-store" });
    let data = null;
    if (raw && resp.ok) {
      data = await resp.arrayBuffer();
    } else {
      const text = await resp.text();
      try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
    }
    if (resp.status === 401) {
      setError("auth", "This node needs an API token: enter it in the “API token” field at the top and press Use.");
    } else {
      clearError("auth");
    }
    if (!resp.ok) {
      const detail = data && data.error ? `${data.error.code}: ${data.error.message}` : resp.statusText;
      return { ok: false, status: resp.status, data, headers: resp.headers, error: `${resp.status} ${detail}` };
    }
    if (!raw && (data === null || typeof data !== "object")) {
      return { ok: false, status: resp.status, data, headers: resp.headers, error: "the answer was not JSON" };
    }
    return { ok: true, status: resp.status, data, headers: resp.headers, error: null };
  } catch (e) {
    const error = e && e.name === "AbortError"
      ? `no answer within ${timeout / 1000} s`
      : "the node did not answer (" + (e && e.message ? e.message : "network error") + ")";
    return { ok: false, status: 0, data: null, headers: null, error };
  } finally {
    clearTimeout(timer);
  }
}

/** Records a failed call in #errors (401s are summarised once, under "auth"). */
function noteResult(source, result) {
  if (result.ok || result.status === 401) clearError(source);
  else setError(source, `${source}: ${result.error}`);
}

function setError(source, message) {
  state.errors.set(source, message);
  renderErrors();
}

function clearError(source) {
  if (state.errors.delete(source)) renderErrors();
}

function renderErrors() {
  const box = $("#errors");
  const text = [...state.errors.values()].join("\n");
  if (box.dataset.text === text) return; // unchanged: do not re-announce it
  box.dataset.text = text;
  box.replaceChildren(...[...state.errors.values()].map((m) => h("p", null, m)));
}

// ---------- node identity: colour + number + pattern ----------

function nodeIndex(id) {
  return (((Number(id) - 1) % 8) + 8) % 8;
}

function nodeColor(id) {
  return `var(--n${nodeIndex(id) + 1})`;
}

function patternId(id) {
  return id === null || id === undefined ? "pat-none" : `pat-n${id}`;
}

/** The fill patterns live in one tiny SVG so tables and the ring can both use them. */
function ensurePattern(id) {
  let defs = $("#node-patterns defs");
  if (!defs) {
    const svg = s("svg", { id: "node-patterns", width: 0, height: 0, "aria-hidden": "true", style: "position:absolute" });
    defs = s("defs");
    svg.append(defs);
    document.body.append(svg);
  }
  const pid = patternId(id);
  if (document.getElementById(pid)) return pid;
  const p = s("pattern", { id: pid, width: 8, height: 8, patternUnits: "userSpaceOnUse" });
  const fill = id === null || id === undefined ? "#b8bcc4" : nodeColor(id);
  p.append(s("rect", { width: 8, height: 8, style: `fill:${fill}` }));
  const mark = { stroke: "rgba(255,255,255,.7)", "stroke-width": 1.6, fill: "none" };
  const kind = id === null || id === undefined ? "none" : PATTERNS[nodeIndex(id)];
  const shapes = {
    none: [["path", { d: "M0,4 H3 M5,4 H8", ...mark, stroke: "#555" }]],
    solid: [],
    stripes: [["path", { d: "M-2,2 L2,-2 M0,8 L8,0 M6,10 L10,6", ...mark }]],
    dots: [["circle", { cx: 4, cy: 4, r: 1.7, fill: "rgba(255,255,255,.8)" }]],
    bars: [["path", { d: "M0,4 H8", ...mark }]],
    cross: [["path", { d: "M0,0 L8,8 M8,0 L0,8", ...mark, "stroke-width": 1.1 }]],
    columns: [["path", { d: "M4,0 V8", ...mark }]],
    checks: [["rect", { width: 4, height: 4, fill: "rgba(255,255,255,.5)" }], ["rect", { x: 4, y: 4, width: 4, height: 4, fill: "rgba(255,255,255,.5)" }]],
    backslash: [["path", { d: "M-2,6 L2,10 M0,0 L8,8 M6,-2 L10,2", ...mark }]],
  };
  for (const [tag, attrs] of shapes[kind]) p.append(s(tag, attrs));
  defs.append(p);
  return pid;
}

/** "N2" with its swatch: colour, pattern and number together. */
function nodeBadge(id, extra) {
  const pid = ensurePattern(id);
  const sw = s("svg", { viewBox: "0 0 16 16", "aria-hidden": "true" });
  sw.append(s("rect", { width: 16, height: 16, fill: `url(#${pid})` }));
  const label = id === null || id === undefined ? "none" : `N${id}`;
  return h("span", { class: "node-badge", title: id == null ? "no leader" : `node ${id} (${PATTERNS[nodeIndex(id)]})` }, sw, label, extra || null);
}

// ---------- hash ring geometry ----------

function hashFraction(hex) {
  try { return Number(BigInt(hex)) / TWO_64; } catch (_) { return 0; }
}

function polar(frac, radius) {
  const a = frac * 2 * Math.PI - Math.PI / 2; // 0 at the top, clockwise
  return [RING.cx + radius * Math.cos(a), RING.cy + radius * Math.sin(a)];
}

function arcPath(f0, f1) {
  const { outer: R, inner: r } = RING;
  if (f1 - f0 >= 0.99999) {
    // One shard owns the whole ring: two half-donuts (an arc cannot end where it starts).
    return arcPath(0, 0.5) + " " + arcPath(0.5, 1);
  }
  const large = f1 - f0 > 0.5 ? 1 : 0;
  const p = (f, rad) => polar(f, rad).map((v) => v.toFixed(2)).join(",");
  return `M${p(f0, R)} A${R},${R} 0 ${large} 1 ${p(f1, R)} L${p(f1, r)} A${r},${r} 0 ${large} 0 ${p(f0, r)} Z`;
}

// ---------- derived facts ----------

function replicaIds(shard) {
  return (shard.replicas || []).map((r) => r.node_id);
}

function nodeIds() {
  const ids = new Set();
  for (const n of (state.cluster && state.cluster.nodes) || []) ids.add(n.id);
  for (const sh of state.shards) replicaIds(sh).forEach((id) => ids.add(id));
  for (const id of (state.faults && state.faults.nodes) || []) ids.add(id);
  return [...ids].sort((a, b) => a - b);
}

/** Per node: replicas held and shards led, from the shards' own reports (fresh every poll). */
function perNode() {
  const out = new Map(nodeIds().map((id) => [id, { id, replicas: 0, leaders: 0, learners: 0, keys: 0, bytes: 0, rate: 0, known: false }]));
  for (const sh of state.shards) {
    for (const id of replicaIds(sh)) {
      const n = out.get(id);
      if (!n) continue;
      n.replicas++;
      if (sh.keys !== undefined) { n.keys += sh.keys; n.bytes += sh.bytes; n.known = true; }
    }
    for (const id of sh.learners || []) if (out.get(id)) out.get(id).learners++;
    const lead = out.get(sh.leader);
    if (lead) { lead.leaders++; lead.rate += state.rates.get(sh.id) || 0; }
  }
  return out;
}

function shardSummary(sh) {
  const f0 = hashFraction(sh.range.start);
  const f1 = hashFraction(sh.range.end);
  const rate = state.rates.get(sh.id);
  return [
    `Shard ${sh.id} · leader ${sh.leader == null ? "none" : "N" + sh.leader}`,
    `range ${shortHex(sh.range.start)}–${shortHex(sh.range.end)} (${((f1 - f0) * 100).toFixed(1)}% of the ring)`,
    `replicas ${replicaIds(sh).map((id) => "N" + id).join(", ") || "none"}` + ((sh.learners || []).length ? ` · learners ${sh.learners.map((id) => "N" + id).join(", ")}` : ""),
    `keys ${fmtNum(sh.keys)} · ${fmtBytes(sh.bytes)}`,
    `writes ${fmtRate(rate)}/s · epoch ${sh.epoch}`,
  ];
}

// ---------- polling ----------

async function pollCore() {
  const [cluster, shards, stats] = await Promise.all([api("/v1/cluster"), api("/v1/shards"), api("/v1/stats")]);
  noteResult("cluster", cluster);
  noteResult("shards", shards);
  noteResult("stats", stats);
  const now = performance.now();
  if (cluster.ok) state.cluster = cluster.data;
  if (shards.ok && Array.isArray(shards.data.shards)) {
    state.shards = shards.data.shards.slice().sort((a, b) => hashFraction(a.range.start) - hashFraction(b.range.start));
    updateShardRates(now);
  }
  if (stats.ok) {
    state.stats = stats.data;
    updateRequestRates(now);
  }
  if (cluster.ok && shards.ok) {
    const t = new Date();
    const el = $("#last-update");
    el.dateTime = t.toISOString();
    el.textContent = t.toLocaleTimeString();
  }
}

/** Writes per second per shard: how fast its applied log index moves (one entry per write). */
function updateShardRates(now) {
  const seen = new Set();
  for (const sh of state.shards) {
    seen.add(sh.id);
    if (sh.applied_index === undefined) continue;
    const prev = state.prevApplied.get(sh.id);
    state.prevApplied.set(sh.id, [sh.applied_index, now]);
    if (!prev || sh.applied_index < prev[0] || now <= prev[1]) continue;
    const r = ((sh.applied_index - prev[0]) * 1000) / (now - prev[1]);
    const old = state.rates.get(sh.id);
    state.rates.set(sh.id, old === undefined ? r : old * 0.4 + r * 0.6); // smooth the jitter of polling
  }
  for (const id of [...state.rates.keys()]) if (!seen.has(id)) { state.rates.delete(id); state.prevApplied.delete(id); }
}

function updateRequestRates(now) {
  const req = state.stats.requests;
  if (!req) return;
  const prev = state.prevRequests;
  state.prevRequests = [req, now];
  if (!prev || now <= prev[1]) return;
  const dt = (now - prev[1]) / 1000;
  const d = (k) => Math.max(0, (req[k] - prev[0][k]) / dt);
  state.requestRates = { reads: d("kv_reads"), writes: d("kv_writes"), errors: d("client_errors") + d("server_errors") };
}

async function pollOperators() {
  if (!state.schedulingAvailable) return;
  const ops = await api("/v1/operators");
  let explain = null;
  const due = state.pollCount % EXPLAIN_EVERY === 0 || state.explain === undefined;
  if (due && ![404, 501].includes(ops.status)) explain = await api("/v1/schedule/explain");
  // A version without the scheduler answers 404 (no route) or 501: say so once, stop asking.
  if ([404, 501].includes(ops.status) || (explain && [404, 501].includes(explain.status))) {
    state.schedulingAvailable = false;
    clearError("operators");
    clearError("schedule/explain");
    $("#operators-unavailable").hidden = false;
    $("#operators-body").hidden = true;
    return;
  }
  noteResult("operators", ops);
  if (ops.ok) renderOperators(ops.data);
  if (explain) {
    noteResult("schedule/explain", explain);
    state.explain = explain;
    renderExplain(explain);
  }
}

async function pollFaults() {
  if (state.faultsAvailable === false) return;
  const r = await api("/v1/demo/faults");
  if (r.status === 404) {
    // `midasflow server` has no demo routes: the panel stays hidden and is not asked again.
    state.faultsAvailable = false;
    clearError("demo faults");
    return;
  }
  noteResult("demo faults", r);
  if (r.ok) applyFaults(r.data);
}

function applyFaults(data) {
  state.faultsAvailable = true;
  state.faults = data;
  const now = performance.now();
  const perNodeLoad = (data.load && data.load.per_node) || {};
  for (const [id, c] of Object.entries(perNodeLoad)) {
    const prev = state.prevLoad.get(id);
    state.prevLoad.set(id, [c.ok, now]);
    if (prev && now > prev[1] && c.ok >= prev[0]) state.loadRates.set(id, ((c.ok - prev[0]) * 1000) / (now - prev[1]));
  }
  $("#faults").hidden = false;
  $("#nav-faults").hidden = false;
  renderFaults();
}

async function pollShardDetail() {
  if (state.selectedShard === null) return;
  const id = state.selectedShard;
  const r = await api(`/v1/shards/${encodeURIComponent(id)}`);
  if (state.selectedShard !== id) return; // another shard was picked meanwhile
  renderShardDetail(id, r);
}

async function pollOnce() {
  state.pollCount++;
  try {
    // Without a valid token every call answers 401: ask once per poll until one works.
    if (state.errors.has("auth") && !(await api("/v1/cluster")).ok) return;
    await Promise.all([pollCore(), pollOperators(), pollFaults(), pollShardDetail()]);
    clearError("console");
    renderAll();
  } catch (e) {
    // A bug here must not stop the polling or surface as an uncaught error.
    setError("console", "console: " + (e && e.message ? e.message : String(e)));
  }
}

async function pollLoop() {
  const started = performance.now();
  await pollOnce();
  setTimeout(pollLoop, Math.max(200, POLL_MS - (performance.now() - started)));
}

// ---------- rendering ----------

function renderAll() {
  renderCluster();
  renderRing();
  renderHot();
  if (state.faults) renderFaults();
}

function renderCluster() {
  const c = state.cluster;
  if (c) {
    setText($("#served-by"), "N" + c.node_id);
    setText($("#pd-leader"), c.pd_leader == null ? "none known" : "N" + c.pd_leader);
    setText($("#pd-voters"), (c.pd_voters || []).map((v) => "N" + v).join(", ") || "–");
    setText($("#routing-version"), c.routing_version);
    setText($("#cluster-id"), c.cluster_id || "not bootstrapped");
    $("#cluster-id").title = c.cluster_id || "";
  }
  const counts = perNode();
  const byId = new Map(((c && c.nodes) || []).map((n) => [n.id, n]));
  const tbody = $("#cluster-nodes tbody");
  const ids = nodeIds();
  for (const tr of [...tbody.rows]) if (!ids.includes(Number(tr.dataset.nodeId))) tr.remove();
  ids.forEach((id, i) => {
    let tr = tbody.querySelector(`tr[data-node-id="${id}"]`);
    if (!tr) {
      tr = h("tr", { "data-node-id": id },
        h("th", { scope: "row", "data-field": "node" }),
        h("td", { "data-field": "state" }),
        h("td", { "data-field": "replicas", class: "num" }),
        h("td", { "data-field": "leaders", class: "num" }),
        h("td", { "data-field": "notes" }));
    }
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
    const n = byId.get(id);
    const count = counts.get(id);
    const nodeCell = tr.querySelector('[data-field="node"]');
    const isPd = c && c.pd_leader === id;
    const addr = n ? n.addr : "";
    const key = `${id}|${isPd}|${addr}`;
    if (nodeCell.dataset.key !== key) {
      nodeCell.dataset.key = key;
      nodeCell.replaceChildren(nodeBadge(id, isPd ? h("span", { class: "pd-tag", title: "placement driver leader" }, "PD") : null),
        h("span", { class: "addr mono", "data-field": "addr" }, addr));
    }
    const st = n ? n.state : "unknown";
    tr.dataset.state = st;
    const stCell = tr.querySelector('[data-field="state"]');
    if (stCell.textContent !== st) stCell.replaceChildren(h("span", { class: `state state-${st}` }, st));
    setText(tr.querySelector('[data-field="replicas"]'), state.shards.length ? count.replicas : n ? n.shards : "–");
    setText(tr.querySelector('[data-field="leaders"]'), state.shards.length ? count.leaders : "–");
    const notes = [];
    if (c && c.node_id === id) notes.push(h("span", { class: "here-tag", title: "this node serves this page and answers its API calls" }, "this page"));
    if (count && count.learners) notes.push(h("span", { class: "hint" }, `${count.learners} learner(s) `));
    for (const f of faultsOf(id)) notes.push(h("span", { class: "fault-tag" }, f));
    const notesCell = tr.querySelector('[data-field="notes"]');
    const notesKey = notes.map((x) => x.textContent).join("|");
    if (notesCell.dataset.key !== notesKey) { notesCell.dataset.key = notesKey; notesCell.replaceChildren(...notes); }
  });
  const st = state.stats;
  const rr = state.requestRates;
  if (st) {
    setText($("#this-node-requests"), `N${st.node_id} (this page's node): ` +
      (rr ? `${fmtRate(rr.reads)} reads/s, ${fmtRate(rr.writes)} writes/s, ${fmtRate(rr.errors)} errors/s, ` : "") +
      `${st.requests.in_flight} in flight, ${fmtBytes(st.node.storage_bytes)} on disk, up ${fmtMs(st.uptime_seconds * 1000)}.`);
  }
}

function faultsOf(id) {
  const f = state.faults;
  if (!f) return [];
  const out = [];
  if ((f.isolated || []).includes(id)) out.push("isolated");
  if ((f.crashed || []).includes(id)) out.push("crashed");
  for (const [a, b] of f.cut || []) if (a === id || b === id) out.push(`cut from N${a === id ? b : a}`);
  return out;
}

function renderRing() {
  const arcs = $("#ring-arcs");
  const labels = $("#ring-labels");
  const existing = new Map([...arcs.querySelectorAll("path.shard-arc")].map((p) => [Number(p.dataset.shardId), p]));
  const present = new Set();
  for (const sh of state.shards) {
    present.add(sh.id);
    const f0 = hashFraction(sh.range.start);
    const f1 = hashFraction(sh.range.end);
    let path = existing.get(sh.id);
    if (!path) {
      path = s("path", { class: "shard-arc", tabindex: 0, role: "button", "data-shard-id": sh.id });
      path.addEventListener("click", () => selectShard(sh.id));
      path.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); selectShard(sh.id); } });
      path.addEventListener("mouseenter", (e) => showTooltip(sh.id, e));
      path.addEventListener("mousemove", (e) => showTooltip(sh.id, e));
      path.addEventListener("mouseleave", hideTooltip);
      path.addEventListener("focus", () => showTooltip(sh.id, null));
      path.addEventListener("blur", hideTooltip);
      arcs.append(path);
    }
    const leader = sh.leader == null ? "" : String(sh.leader);
    setAttrs(path, {
      d: arcPath(f0, f1),
      "data-leader": leader,
      fill: `url(#${ensurePattern(sh.leader == null ? null : sh.leader)})`,
      "aria-label": shardSummary(sh).join("; "),
    });
    path.classList.toggle("no-leader", leader === "");
    path.classList.toggle("selected", state.selectedShard === sh.id);
  }
  for (const [id, p] of existing) if (!present.has(id)) p.remove();

  // Labels: shard id and leader number on arcs wide enough to hold them.
  labels.replaceChildren();
  for (const sh of state.shards) {
    const f0 = hashFraction(sh.range.start);
    const f1 = hashFraction(sh.range.end);
    const span = f1 - f0;
    if (span < 0.03) continue;
    const [x, y] = polar((f0 + f1) / 2, (RING.outer + RING.inner) / 2);
    const lead = sh.leader == null ? "—" : "N" + sh.leader;
    if (span >= 0.07) {
      const t = s("text", { x, y: y - 3, "text-anchor": "middle", class: "arc-label" });
      t.textContent = "#" + sh.id;
      const t2 = s("text", { x, y: y + 10, "text-anchor": "middle", class: "arc-label" });
      t2.textContent = lead;
      labels.append(t, t2);
    } else {
      const t = s("text", { x, y: y + 4, "text-anchor": "middle", class: "arc-label" });
      t.textContent = lead;
      labels.append(t);
    }
  }
  const ticks = $("#ring-ticks");
  if (!ticks.childElementCount) {
    ["0x0", "0x4…", "0x8…", "0xc…"].forEach((label, i) => {
      const f = i / 4;
      const [x1, y1] = polar(f, RING.outer + 2);
      const [x2, y2] = polar(f, RING.outer + 8);
      ticks.append(s("line", { x1, y1, x2, y2, class: "tick" }));
      const [tx, ty] = polar(f, RING.outer + 20);
      const t = s("text", { x: tx, y: ty + 3, "text-anchor": "middle", class: "tick-label" });
      t.textContent = label;
      ticks.append(t);
    });
  }
  setText($("#ring-center"), state.shards.length || "–");
  setText($("#ring-center2"), state.shards.length === 1 ? "shard" : "shards");
  renderLegend();
  if (state.hoveredShard !== null) refreshTooltip();
}

function renderLegend() {
  const counts = perNode();
  const leaderless = state.shards.filter((sh) => sh.leader == null).length;
  const items = [...counts.values()].map((n) =>
    h("li", null, nodeBadge(n.id), ` ${PATTERNS[nodeIndex(n.id)]}, leads ${n.leaders}`));
  if (leaderless) items.push(h("li", null, nodeBadge(null), ` no leader: ${leaderless}`));
  const legend = $("#ring-legend");
  const key = items.map((i) => i.textContent).join("|");
  if (legend.dataset.key !== key) { legend.dataset.key = key; legend.replaceChildren(...items); }
}

function showTooltip(id, event) {
  state.hoveredShard = id;
  const tip = $("#ring-tooltip");
  const wrap = $(".ring-wrap").getBoundingClientRect();
  let x, y;
  if (event) {
    x = event.clientX - wrap.left + 14;
    y = event.clientY - wrap.top + 14;
  } else {
    const p = document.querySelector(`path.shard-arc[data-shard-id="${id}"]`).getBoundingClientRect();
    x = p.left - wrap.left + p.width / 2;
    y = p.top - wrap.top + p.height / 2;
  }
  tip.style.left = Math.min(x, wrap.width - 200) + "px";
  tip.style.top = y + "px";
  refreshTooltip();
  tip.hidden = false;
}

function refreshTooltip() {
  const sh = state.shards.find((x) => x.id === state.hoveredShard);
  if (!sh) return hideTooltip();
  $("#ring-tooltip").replaceChildren(...shardSummary(sh).map((line, i) => (i ? h("div", null, line) : h("strong", null, line))));
}

function hideTooltip() {
  state.hoveredShard = null;
  $("#ring-tooltip").hidden = true;
}

async function selectShard(id) {
  state.selectedShard = id;
  $("#shard-detail").hidden = false;
  setText($("#shard-detail-h"), `Shard ${id}`);
  renderRing();
  await pollShardDetail();
}

function renderShardDetail(id, r) {
  const body = $("#shard-detail-body");
  if (!r.ok) {
    body.replaceChildren(h("dt", null, "error"), h("dd", null, r.status === 404 ? `shard ${id} no longer exists (split or merged away)` : r.error));
    return;
  }
  const d = r.data;
  const lr = d.local_replica || {};
  const ids = (list) => (list && list.length ? list.map((x) => "N" + x).join(", ") : "none");
  const rows = [
    ["leader", d.leader == null ? nodeBadge(null) : nodeBadge(d.leader)],
    ["replicas", h("span", null, ...replicaIds(d).map((rid) => [nodeBadge(rid, rid === d.leader ? " (leader)" : null), " "]))],
    ["learners", ids(d.learners)],
    ["range", h("span", { class: "mono" }, `${d.range.start} – ${d.range.end}`)],
    ["share of ring", ((hashFraction(d.range.end) - hashFraction(d.range.start)) * 100).toFixed(2) + "%"],
    ["epoch", d.epoch],
    ["term", fmtNum(d.term)],
    ["applied index", fmtNum(d.applied_index)],
    ["writes/s", fmtRate(state.rates.get(d.id))],
    ["keys", fmtNum(d.keys)],
    ["bytes", fmtBytes(d.bytes)],
  ];
  if (d.local_replica) {
    const served = state.cluster ? "N" + state.cluster.node_id : "this node";
    rows.push(
      [`replica on ${served}`, lr.state],
      ["last log index", fmtNum(lr.last_log_index)],
      ["snapshot index", fmtNum(lr.snapshot_index)],
      ["snapshot installs", fmtNum(lr.snapshot_installs)],
      ["group voters", ids(lr.voters)],
      ["group learners", ids(lr.group_learners)],
    );
  } else {
    rows.push(["local replica", "none on this node: term, index, keys and bytes are unknown here"]);
  }
  body.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
}

// ---------- sortable tables ----------

const HOT_COLUMNS = {
  "hot-shards": [
    { key: "id", label: "Shard", text: true },
    { key: "leader", label: "Leader", render: (r) => nodeBadge(r.leader), sortVal: (r) => (r.leader == null ? -1 : r.leader) },
    { key: "share", label: "Ring %", fmt: (v) => v.toFixed(1) },
    { key: "keys", label: "Keys", fmt: fmtNum },
    { key: "bytes", label: "Bytes", fmt: fmtBytes },
    { key: "rate", label: "Writes/s", fmt: fmtRate, bar: true },
    { key: "applied", label: "Applied index", fmt: fmtNum },
  ],
  "hot-nodes": [
    { key: "id", label: "Node", render: (r) => nodeBadge(r.id), text: true },
    { key: "replicas", label: "Replicas", fmt: fmtNum },
    { key: "leaders", label: "Leads", fmt: fmtNum },
    { key: "keys", label: "Keys held", fmt: fmtNum },
    { key: "bytes", label: "Bytes held", fmt: fmtBytes },
    { key: "rate", label: "Writes/s led", fmt: fmtRate, bar: true },
  ],
};

function sortableTable(tableId, rows) {
  const table = document.getElementById(tableId);
  const cols = HOT_COLUMNS[tableId];
  const sort = state.sort[tableId];
  if (!table.tHead) {
    const tr = h("tr");
    for (const col of cols) {
      const th = h("th", { scope: "col", class: col.text ? null : "num", "data-key": col.key });
      th.append(h("button", { type: "button", onclick: () => {
        const same = sort.key === col.key;
        sort.key = col.key;
        sort.dir = same ? (sort.dir === "desc" ? "asc" : "desc") : col.text ? "asc" : "desc";
        renderHot();
      } }, col.label));
      tr.append(th);
    }
    table.append(h("thead", null, tr), h("tbody"));
  }
  for (const th of table.tHead.rows[0].cells) {
    th.setAttribute("aria-sort", th.dataset.key === sort.key ? (sort.dir === "desc" ? "descending" : "ascending") : "none");
  }
  const col = cols.find((c) => c.key === sort.key) || cols[0];
  const val = (r) => (col.sortVal ? col.sortVal(r) : r[col.key] === undefined || r[col.key] === null ? -1 : r[col.key]);
  // Ties fall back to keys, then id, so equally idle shards keep a stable order.
  rows.sort((a, b) => (val(a) - val(b) || (a.keys || 0) - (b.keys || 0) || b.id - a.id) * (sort.dir === "desc" ? -1 : 1));
  const max = Math.max(1e-9, ...rows.map((r) => r.rate || 0));
  const body = rows.map((r) => h("tr", { "data-id": r.id }, cols.map((c) => {
    const v = r[c.key];
    const content = c.render ? c.render(r) : c.fmt ? c.fmt(v) : v;
    const attrs = { class: [c.text ? "" : "num", c.bar ? "bar" : ""].join(" ").trim() || null };
    if (c.bar) attrs.style = `--pct:${((r.rate || 0) / max) * 100}%`;
    return h("td", attrs, content);
  })));
  if (!rows.length) body.push(h("tr", null, h("td", { colspan: cols.length, class: "empty-row" }, "no data yet")));
  table.tBodies[0].replaceChildren(...body);
}

function renderHot() {
  const shardRows = state.shards.map((sh) => ({
    id: sh.id,
    leader: sh.leader,
    share: (hashFraction(sh.range.end) - hashFraction(sh.range.start)) * 100,
    keys: sh.keys,
    bytes: sh.bytes,
    rate: state.rates.get(sh.id),
    applied: sh.applied_index,
  }));
  sortableTable("hot-shards", shardRows);
  const nodeRows = [...perNode().values()].map((n) => ({
    id: n.id, replicas: n.replicas, leaders: n.leaders,
    keys: n.known ? n.keys : undefined, bytes: n.known ? n.bytes : undefined, rate: n.rate,
  }));
  sortableTable("hot-nodes", nodeRows);
}

// ---------- operators ----------

function kindText(k) {
  if (!k) return "?";
  const parts = [`${k.type} shard ${k.shard}`];
  if (k.from !== undefined) parts.push(`from N${k.from}`);
  if (k.to !== undefined) parts.push(`to N${k.to}`);
  if (k.at !== undefined) parts.push(`at ${k.at}`);
  if (k.child) parts.push(`→ shard ${k.child}`);
  return parts.join(" ");
}

function simpleTable(table, headers, rows, empty) {
  const thead = h("thead", null, h("tr", null, headers.map((x) => h("th", { scope: "col" }, x))));
  const body = rows.length ? rows.map((r) => h("tr", null, r.map((c) => h("td", null, c))))
    : [h("tr", null, h("td", { colspan: headers.length, class: "empty-row" }, empty))];
  table.replaceChildren(thead, h("tbody", null, body));
}

function renderOperators(data) {
  simpleTable($("#ops-running"), ["Id", "Operator", "Origin", "Step", "Age", "Waiting for", "Reason"],
    (data.running || []).map((o) => [o.id, kindText(o.kind), o.origin, o.step, fmtMs(o.age_ms), o.waiting_for || "–", o.reason]),
    "no operator running");
  simpleTable($("#ops-finished"), ["Id", "Operator", "Origin", "Outcome", "Took", "Ago", "Reason"],
    (data.finished || []).slice(0, 12).map((o) => [o.id, kindText(o.kind), o.origin,
      (o.outcome && o.outcome.outcome) + (o.outcome && o.outcome.reason ? `: ${o.outcome.reason}` : ""),
      fmtMs(o.duration_ms), fmtMs(o.finished_ago_ms), o.reason]),
    "none yet");
}

function renderExplain(r) {
  const box = $("#explain");
  if (!r.ok) {
    box.replaceChildren(h("p", { class: "hint" }, `The placement driver's leader did not explain: ${r.error}`));
    return;
  }
  const e = r.data;
  const flags = [`asked N${e.pd_leader} (PD leader)`, `${e.running} running`];
  if (e.paused) flags.push("scheduling PAUSED");
  if (e.warming_up) flags.push("warming up: a new leader waits before it schedules");
  const nodes = (e.nodes || []).map((n) => h("li", null, nodeBadge(n.id), ` ${n.health}`,
    n.last_seen_ms == null ? ", never heard from" : `, heard from ${fmtMs(n.last_seen_ms)} ago`));
  // One line per finding, led by its checker; "nothing to do" lines are dimmed.
  const findings = (e.checkers || []).flatMap((c) => (c.findings || []).map((f) =>
    h("li", { class: f.startsWith("nothing") ? "nothing" : null }, h("strong", null, c.checker), ": " + f)));
  const would = (e.would_start || []).map((p) => h("li", null, h("strong", null, kindText(p.kind)), ": " + p.reason));
  box.replaceChildren(
    h("p", null, flags.join(" · ")),
    h("ul", { class: "findings inline" }, nodes),
    h("ul", { class: "findings" }, findings),
    h("p", null, h("strong", null, "Would start: "), would.length ? "" : "nothing"),
    ...(would.length ? [h("ul", { class: "findings" }, would)] : []),
  );
}

// ---------- demo faults ----------

function renderFaults() {
  const f = state.faults;
  const ids = (f.nodes && f.nodes.length ? f.nodes : nodeIds()).slice().sort((a, b) => a - b);
  const box = $("#faults-nodes");
  for (const li of [...box.children]) if (!ids.includes(Number(li.dataset.nodeId))) li.remove();
  ids.forEach((id, i) => {
    let li = box.querySelector(`li[data-node-id="${id}"]`);
    if (!li) {
      const btn = (action, label, cls) => h("button", { type: "button", "data-action": action, "data-node": id, class: cls || null,
        "aria-label": `${label} node ${id}` }, label);
      li = h("li", { class: "fault-node", "data-node-id": id },
        h("div", { class: "who" }, nodeBadge(id), h("span", { class: "tags" })),
        h("div", { class: "load" }),
        h("div", { class: "controls" }, btn("isolate", "Isolate"), btn("crash", "Crash", "danger"), btn("restart", "Restart")),
        h("div", { class: "load-rate hint" }),
        h("div", { class: "small-err" }));
    }
    if (box.children[i] !== li) box.insertBefore(li, box.children[i] || null);
    const isolated = (f.isolated || []).includes(id);
    const crashed = (f.crashed || []).includes(id);
    li.querySelector('[data-action="isolate"]').disabled = isolated || crashed || !!state.faultBusy;
    li.querySelector('[data-action="crash"]').disabled = crashed || !!state.faultBusy;
    li.querySelector('[data-action="restart"]').disabled = !crashed || !!state.faultBusy;
    const tags = faultsOf(id).map((t) => h("span", { class: "fault-tag" }, t));
    const tagBox = li.querySelector(".tags");
    const tagKey = tags.map((t) => t.textContent).join("|");
    if (tagBox.dataset.key !== tagKey) { tagBox.dataset.key = tagKey; tagBox.replaceChildren(...tags); }
    // Client load through this node: ok keeps climbing on the majority side, stalls elsewhere.
    const c = f.load && f.load.per_node && f.load.per_node[String(id)];
    const rate = state.loadRates.get(String(id));
    li.querySelector(".load").replaceChildren(...(c ? [
      h("span", { class: "ok-count", title: "writes that succeeded" }, `${fmtNum(c.ok)} ok`), " / ",
      h("span", { class: c.failed ? "load-fail" : null, title: "writes that failed" }, `${fmtNum(c.failed)} failed`),
    ] : ["no load counters"]));
    setText(li.querySelector(".load-rate"), !c ? "" : !f.load.enabled ? "load off"
      : rate === undefined ? "…" : rate < 0.05 ? "stalled: 0 ok/s" : `${fmtRate(rate)} ok/s`);
    const err = li.querySelector(".small-err");
    setText(err, c && c.last_error ? "last error: " + c.last_error : "");
    err.title = (c && c.last_error) || "";
  });
  // The cut-link pickers: keep the user's choice when the node list is unchanged.
  for (const [sel, def] of [["#cut-a", 0], ["#cut-b", 1]]) {
    const el = $(sel);
    const key = ids.join(",");
    if (el.dataset.key !== key) {
      const keep = el.value;
      el.dataset.key = key;
      el.replaceChildren(...ids.map((id) => h("option", { value: id }, "N" + id)));
      el.value = ids.includes(Number(keep)) ? keep : String(ids[Math.min(def, ids.length - 1)]);
    }
  }
  const load = $('button[data-action="load"]');
  const on = !!(f.load && f.load.enabled);
  load.setAttribute("aria-pressed", String(on));
  setText(load, on ? "Client load: on" : "Client load: off");
  for (const b of document.querySelectorAll('#faults button[data-action="cut"], #faults button[data-action="heal"], #faults button[data-action="load"]')) b.disabled = !!state.faultBusy;

  // The server's own wording when it gives one; the same sentences built here otherwise.
  const items = [];
  if (Array.isArray(f.faults) && f.faults.every((x) => typeof x === "string")) items.push(...f.faults);
  else for (const id of f.isolated || []) items.push(`node ${id} isolated`);
  if (!Array.isArray(f.faults)) {
    for (const [a, b] of f.cut || []) items.push(`link ${a}–${b} cut`);
    for (const id of f.crashed || []) items.push(`node ${id} crashed`);
  }
  const list = $("#faults-list");
  const key = items.join("|");
  if (list.dataset.key !== key) {
    list.dataset.key = key;
    list.replaceChildren(...(items.length ? items.map((t) => h("li", null, t)) : [h("li", { class: "empty" }, "no faults: every node is up and every link works")]));
  }
}

async function faultAction(button) {
  const action = button.dataset.action;
  const node = button.dataset.node ? Number(button.dataset.node) : undefined;
  let path = "/v1/demo/faults";
  let body;
  if (action === "cut") {
    const a = Number($("#cut-a").value);
    const b = Number($("#cut-b").value);
    if (a === b) { setText($("#faults-status"), "Pick two different nodes to cut the link between them."); return; }
    body = { kind: "cut", nodes: [a, b] };
  } else if (action === "heal") {
    body = { kind: "heal" };
  } else if (action === "load") {
    path = "/v1/demo/load";
    body = { enabled: !(state.faults && state.faults.load && state.faults.load.enabled) };
  } else {
    body = { kind: action, node };
  }
  state.faultBusy = true;
  renderFaults();
  setText($("#faults-status"), "sending…");
  const r = await api(path, { method: "POST", body, timeout: 30000 }); // a heal may restart two nodes
  state.faultBusy = false;
  if (r.ok) {
    setText($("#faults-status"), describeAction(body) + ": done.");
    applyFaults(r.data);
    renderCluster();
  } else {
    setText($("#faults-status"), `${describeAction(body)} failed: ${r.error}`);
    renderFaults();
  }
  // Keyboard users keep their place even though the button was disabled meanwhile.
  if (document.activeElement === document.body && !button.disabled) button.focus();
}

function describeAction(b) {
  if (b.enabled !== undefined) return b.enabled ? "start client load" : "stop client load";
  if (b.kind === "cut") return `cut link ${b.nodes[0]}–${b.nodes[1]}`;
  if (b.kind === "heal") return "heal";
  return `${b.kind} node ${b.node}`;
}

// ---------- keys ----------

/** Each '/'-separated segment percent-encoded; a trailing "/history" segment keeps its
 * slash encoded so the path is not taken for the history route. */
/**
 * The key as one path segment: every `/` is sent as %2F (the server decodes it), so no
 * `.` or `..` segment of a key can be resolved by the browser into another route, and a
 * key ending in `/history` stays a key. "." and ".." alone are refused by the caller.
 */
function encodeKey(key) {
  return encodeURIComponent(key);
}

function keyProblem(key) {
  if (key === "." || key === "..") return "a key cannot be \".\" or \"..\" from the console (the browser would resolve it as a path)";
  return null;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** A value for people: text if it is UTF-8, else the first bytes in hex. */
function preview(bytes, limit = 4096) {
  try {
    const text = utf8.decode(bytes.subarray(0, Math.min(bytes.length, limit + 4)));
    return text.length > limit ? text.slice(0, limit) + "…" : text;
  } catch (_) {
    const hex = [...bytes.subarray(0, 256)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    return `(binary, ${bytes.length} bytes) ${hex}${bytes.length > 256 ? " …" : ""}`;
  }
}

function base64Bytes(b64) {
  try { return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)); } catch (_) { return new Uint8Array(); }
}

async function lookupKey(key) {
  const out = $("#key-result");
  if (!key) { out.replaceChildren(h("p", { class: "hint" }, "Type a key first.")); return; }
  if (keyProblem(key)) { out.replaceChildren(h("p", { class: "hint" }, keyProblem(key))); return; }
  out.replaceChildren(h("p", { class: "hint" }, "looking up…"));
  // History first: when it shows the key absent or deleted, the value is not asked for, so
  // the browser logs no needless 404.
  const hist = await api(`/v1/kv/${encodeKey(key)}/history`);
  const versions = hist.ok ? hist.data.versions || [] : [];
  const newest = versions[0];
  const table = $("#key-history");
  if (hist.ok) {
    simpleTable(table, ["Version", "Kind", "Value"], versions.map((v) => {
      const bytes = base64Bytes(v.value_base64);
      return [v.version, v.deleted ? "delete" : "put", v.deleted ? "–" : preview(bytes, 120)];
    }), "no retained versions");
    if (hist.data.shard !== undefined) table.caption = h("caption", { class: "hint" }, `shard ${hist.data.shard}`);
  } else {
    simpleTable(table, ["History"], [[hist.status === 404 ? "no history: the key was never written (or its versions were compacted)" : hist.error]], "");
  }
  if (hist.status === 404 || (newest && newest.deleted)) {
    out.replaceChildren(h("p", null, newest
      ? `“${key}” was deleted (version ${newest.version}, shard ${hist.data.shard}).`
      : `“${key}” is not there.`));
    return;
  }
  const r = await api(`/v1/kv/${encodeKey(key)}`, { raw: true });
  if (r.ok) {
    const bytes = new Uint8Array(r.data);
    out.replaceChildren(
      h("p", null, h("strong", null, key), ` · version ${r.headers.get("X-Version") || "?"} · shard ${r.headers.get("X-Shard") || "?"} · ${fmtBytes(bytes.length)}`),
      h("div", { class: "value" }, preview(bytes)));
  } else {
    out.replaceChildren(h("p", null, r.status === 404 ? `“${key}” is not there.` : `Lookup failed: ${r.error}`));
  }
}

/** An in-page confirmation (not window.confirm): resolves true only on "confirm-yes". */
function confirmAction(message, yesLabel) {
  const dialog = $("#confirm-dialog");
  setText($("#confirm-message"), message);
  setText($("#confirm-yes"), yesLabel);
  return new Promise((resolve) => {
    const done = (answer) => {
      $("#confirm-yes").removeEventListener("click", yes);
      $("#confirm-no").removeEventListener("click", no);
      dialog.removeEventListener("cancel", no);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const yes = () => done(true);
    const no = (e) => { if (e) e.preventDefault(); done(false); };
    $("#confirm-yes").addEventListener("click", yes);
    $("#confirm-no").addEventListener("click", no);
    dialog.addEventListener("cancel", no);
    dialog.showModal();
    $("#confirm-no").focus(); // the safe choice has focus
  });
}

async function writeKey(kind) {
  const key = $("#key-input").value;
  const status = $("#key-status");
  if (!key) { setText(status, "Type a key first."); $("#key-input").focus(); return; }
  if (keyProblem(key)) { setText(status, keyProblem(key)); return; }
  const value = $("#value-input").value;
  const bytes = new TextEncoder().encode(value).length;
  const ok = kind === "put"
    ? await confirmAction(`Write ${bytes} bytes to “${key}”? This replaces its current value.`, "Put")
    : await confirmAction(`Delete “${key}”? Its history keeps the old versions until they are compacted.`, "Delete");
  if (!ok) { setText(status, "Cancelled."); return; }
  setText(status, kind === "put" ? "writing…" : "deleting…");
  const r = await api(`/v1/kv/${encodeKey(key)}`, kind === "put" ? { method: "PUT", body: value } : { method: "DELETE" });
  if (r.ok) {
    setText(status, kind === "put"
      ? `Written: version ${r.data.version} on shard ${r.data.shard}.`
      : `Deleted: tombstone version ${r.data.version} on shard ${r.data.shard}.`);
  } else {
    setText(status, `${kind === "put" ? "Put" : "Delete"} failed: ${r.status === 404 ? "the key is not there" : r.error}`);
  }
  await lookupKey(key);
}

// ---------- wiring ----------

function markCurrentSection() {
  for (const a of document.querySelectorAll(".topbar nav a")) {
    if (a.getAttribute("href") === location.hash) a.setAttribute("aria-current", "true");
    else a.removeAttribute("aria-current");
  }
}

function init() {
  $("#token").value = state.token;
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("#token").value.trim();
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
    // A route that was missing only for want of a token is worth asking again.
    if (state.faultsAvailable === false) state.faultsAvailable = undefined;
    pollOnce();
  });
  $("#shard-detail-close").addEventListener("click", () => {
    state.selectedShard = null;
    $("#shard-detail").hidden = true;
    renderRing();
  });
  $("#faults").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-action]");
    if (b && !b.disabled) faultAction(b);
  });
  $("#key-form").addEventListener("submit", (e) => { e.preventDefault(); lookupKey($("#key-input").value); });
  $("#key-put").addEventListener("click", () => writeKey("put"));
  $("#key-delete").addEventListener("click", () => writeKey("delete"));
  window.addEventListener("hashchange", markCurrentSection);
  // Anything that slips through is shown, not thrown at the console.
  window.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    setError("console", "console: " + (e.reason && e.reason.message ? e.reason.message : String(e.reason)));
  });
  markCurrentSection();
  renderHot();
  pollLoop();
}

init();
