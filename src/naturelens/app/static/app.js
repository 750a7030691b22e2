// naturelens review app. Everything from the data is put on the page with textContent
// or as element attributes, never as HTML.
"use strict";

const CONFIG = JSON.parse(document.getElementById("config").textContent);
const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const CLASSES = CONFIG.classes;
const COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
  "#b07aa1", "#ff9da7", "#9c755f", "#17becf", "#a0cbe8", "#ffbe7d"];
const KEYS = "1234567890";
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function className(id) {
  const c = CLASSES.find((c) => c.id === id);
  return c ? c.name : id;
}

function status(text) { $("status").textContent = text; }

async function api(path, options = {}) {
  const opts = { credentials: "same-origin", ...options };
  if (opts.body !== undefined) {
    opts.method = opts.method || "POST";
    opts.headers = { "Content-Type": "application/json", "X-CSRF-Token": CSRF };
    opts.body = JSON.stringify(opts.body);
  }
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const msg = data.error || data.detail || resp.statusText;
    status(`error: ${typeof msg === "string" ? msg : JSON.stringify(msg)}`);
    throw new Error(msg);
  }
  return data;
}

// ------------------------------------------------------------------ labelling + undo
const undoStack = [];
// Labels and undos run one after another, in the order pressed: an undo pressed right
// after a label waits for that label to be stored (and on the stack), so it takes back
// that label, not the one before it.
let labelQueue = Promise.resolve();

function queued(work) {
  const run = labelQueue.then(work);
  labelQueue = run.catch(() => {});
  return run;
}

function label(photoIds, classId, source) {
  return queued(async () => {
    const labels = {};
    for (const pid of photoIds) labels[pid] = classId;
    const user = $("user").value.trim() || null;
    const out = await api("/api/labels", { body: { labels, user, source } });
    undoStack.push(out.previous);
    status(classId === null
      ? `withdrew the label of ${photoIds.length} photo(s)`
      : `labelled ${photoIds.length} photo(s) ${className(classId)}`);
    return out;
  });
}

function undo() {
  return queued(async () => {
    const previous = undoStack.pop();
    if (!previous) { status("nothing to undo"); return; }
    const user = $("user").value.trim() || null;
    await api("/api/labels", { body: { labels: previous, user, source: "undo" } });
    status(`undid the last label of ${Object.keys(previous).length} photo(s)`);
    for (const g of Object.values(grids)) g.refreshLabels(previous);
  });
}

// ------------------------------------------------------------------ grids
class Grid {
  constructor(node, source) {
    this.node = node;
    this.source = source;
    this.rows = [];
    this.cursor = 0;
    this.selected = new Set();
  }

  show(rows) {
    this.rows = rows;
    this.cursor = Math.min(this.cursor, Math.max(0, rows.length - 1));
    this.selected.clear();
    this.node.replaceChildren(...rows.map((r, i) => this.card(r, i)));
    this.mark();
  }

  card(r, i) {
    const img = el("img", { src: `/thumb/${encodeURIComponent(r.photo_id)}`, alt: r.title || "", loading: "lazy" });
    const title = el("div", { class: "title", text: r.title || r.photo_id.slice(0, 12) });
    const gold = el("div", { class: "gold", text: r.label ? className(r.label) : "unlabelled" });
    const card = el("div", { class: "card", "data-photo": r.photo_id }, img, title, gold);
    if (r.predicted) {
      const conf = r.confidence == null ? "" : ` ${(100 * r.confidence).toFixed(0)}%`;
      const set = r.set_size == null ? "" : ` · set of ${r.set_size}`;
      card.append(el("div", { class: "pred", text: `${className(r.predicted)}${conf}${set}` }));
    }
    if (r.note) card.append(el("div", { class: "pred", text: r.note }));
    card.addEventListener("click", (ev) => {
      this.cursor = i;
      if (ev.shiftKey || ev.ctrlKey || ev.metaKey) this.toggle(i);
      this.mark();
    });
    card.addEventListener("dblclick", () => openDetail(this, i));
    return card;
  }

  toggle(i) {
    const pid = this.rows[i].photo_id;
    if (this.selected.has(pid)) this.selected.delete(pid); else this.selected.add(pid);
  }

  mark() {
    this.node.querySelectorAll(".card").forEach((c, i) => {
      c.classList.toggle("cursor", i === this.cursor);
      c.classList.toggle("selected", this.selected.has(c.dataset.photo));
    });
    const cur = this.node.children[this.cursor];
    if (cur) cur.scrollIntoView({ block: "nearest" });
  }

  columns() {
    const cards = this.node.children;
    if (cards.length < 2) return 1;
    const top = cards[0].offsetTop;
    let n = 0;
    while (n < cards.length && cards[n].offsetTop === top) n++;
    return Math.max(1, n);
  }

  move(delta) {
    if (!this.rows.length) return;
    this.cursor = Math.max(0, Math.min(this.rows.length - 1, this.cursor + delta));
    this.mark();
  }

  async labelKey(classId) {
    if (!this.rows.length) return;
    const ids = this.selected.size ? [...this.selected] : [this.rows[this.cursor].photo_id];
    await label(ids, classId, this.source);
    for (const r of this.rows) if (ids.includes(r.photo_id)) r.label = classId;
    this.redraw(ids);
    if (!this.selected.size) this.move(1);
    this.selected.clear();
    this.mark();
  }

  refreshLabels(previous) {
    let hit = false;
    for (const r of this.rows) if (r.photo_id in previous) { r.label = previous[r.photo_id]; hit = true; }
    if (hit) this.redraw(Object.keys(previous));
  }

  redraw(ids) {
    this.node.querySelectorAll(".card").forEach((c) => {
      if (!ids.includes(c.dataset.photo)) return;
      const r = this.rows.find((x) => x.photo_id === c.dataset.photo);
      c.querySelector(".gold").textContent = r.label ? className(r.label) : "unlabelled";
      c.classList.toggle("labelled", Boolean(r.label));
    });
  }
}

const grids = {
  photos: new Grid($("grid"), "grid"),
  queue: new Grid($("queue-grid"), "queue"),
  errors: new Grid($("errors-grid"), "label-errors"),
};

// ------------------------------------------------------------------ photos tab
let offset = 0;
const PAGE = 100;

function filterParams() {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData($("filters"))) if (v !== "") params.set(k, v);
  params.set("offset", offset);
  params.set("limit", PAGE);
  return params;
}

async function loadPhotos() {
  const data = await api(`/api/photos?${filterParams()}`);
  $("count").textContent = `${data.total} photos · showing ${data.total ? offset + 1 : 0}–${offset + data.rows.length}`;
  grids.photos.show(data.rows);
  $("prev").disabled = offset === 0;
  $("next").disabled = offset + data.rows.length >= data.total;
}

$("filters").addEventListener("submit", (ev) => { ev.preventDefault(); offset = 0; loadPhotos(); });
$("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadPhotos(); });
$("next").addEventListener("click", () => { offset += PAGE; loadPhotos(); });

// ------------------------------------------------------------------ detail view
let detailOf = null;
let detailRequest = 0;

async function openDetail(grid, i) {
  detailOf = { grid, i };
  grid.cursor = i;
  grid.mark();
  const pid = grid.rows[i].photo_id;
  const asked = ++detailRequest;
  const d = await api(`/api/photo/${encodeURIComponent(pid)}`);
  if (asked !== detailRequest) return; // a later photo was asked for meanwhile
  const v = d.view || {};
  $("detail").hidden = false;
  $("detail-img").src = `/full/${encodeURIComponent(pid)}`;
  $("detail-img").alt = v.title || pid;
  $("detail-title").textContent = v.title || pid;
  $("detail-label").textContent = `gold: ${v.label ? className(v.label) : "unlabelled"}`;
  const rows = (table, head, data) => {
    table.replaceChildren(el("tr", {}, ...head.map((h) => el("th", { text: h }))),
      ...data.map((r) => el("tr", {}, ...r.map((c) => el("td", { text: c == null ? "" : String(c) })))));
  };
  const preds = d.predictions.map((p) => [p.run_id, p.class_id ? className(p.class_id) : p.status,
    p.confidence == null ? "" : p.confidence.toFixed(3), p.detail || ""]);
  if (d.active) preds.push(["active-learning probe", className(d.active.class_id), d.active.confidence.toFixed(3), ""]);
  rows($("detail-preds"), ["run", "class", "confidence", "reason"], preds);
  rows($("detail-history"), ["when", "class", "origin", "source", "user"],
    d.history.map((h) => [h.created_at, h.class_id ? className(h.class_id) : "(withdrawn)", h.origin, h.source, h.user_name]));
  const fields = [["photo id", pid], ["file", d.photo.path], ["size", `${d.photo.width}×${d.photo.height} ${d.photo.format || ""}`],
    ["EXIF taken", d.photo.exif_taken_at], ["EXIF position", d.photo.exif_lat == null ? "" : `${d.photo.exif_lat}, ${d.photo.exif_lon}`]];
  for (const r of d.refs) {
    for (const k of ["source", "ref", "manifest_id", "label_raw", "title", "tags", "owner", "taken_at", "url"]) {
      if (r[k] != null && r[k] !== "") fields.push([k, r[k]]);
    }
  }
  rows($("detail-fields"), ["field", "value"], fields);
  drawPin(v.lat, v.lon);
}

function closeDetail() { $("detail").hidden = true; detailOf = null; }
$("detail-close").addEventListener("click", closeDetail);

function drawPin(lat, lon) {
  const c = $("detail-pin");
  const g = c.getContext("2d");
  g.fillStyle = "#eef2f5"; g.fillRect(0, 0, c.width, c.height);
  g.strokeStyle = "#c8d0d8"; g.strokeRect(0.5, 0.5, c.width - 1, c.height - 1);
  g.fillStyle = "#333"; g.font = "11px sans-serif";
  if (lat == null || lon == null) { g.fillText("no position", 8, 16); return; }
  const x = ((lon + 180) / 360) * c.width, y = ((90 - lat) / 180) * c.height;
  g.fillStyle = "#e15759"; g.beginPath(); g.arc(x, y, 5, 0, 2 * Math.PI); g.fill();
  g.fillStyle = "#333"; g.fillText(`${lat.toFixed(4)}, ${lon.toFixed(4)}`, 8, 16);
}

// ------------------------------------------------------------------ queue + curve
async function loadQueue() {
  if (!CONFIG.has_embeddings) { $("queue-mode").textContent = "No stored embeddings: run `naturelens embed` first."; return; }
  const q = await api("/api/queue?n=12");
  $("queue-mode").textContent = q.mode === "representative"
    ? "Cold start: representatives of the embedding space (cluster medoids)."
    : "Photos the probe is least sure of, spread over the embedding space.";
  const rows = q.photo_ids.map((pid) => ({ photo_id: pid, title: "", label: null }));
  grids.queue.show(rows);
  drawCurve((await api("/api/curve")).curve);
}

$("queue-refresh").addEventListener("click", loadQueue);
$("retrain").addEventListener("click", async () => {
  const r = await api("/api/retrain", { body: {} });
  drawCurve(r.curve);
  status(`retrained in ${r.seconds == null ? "?" : r.seconds.toFixed(2)} s`);
});

function drawCurve(curve) {
  const svg = $("curve");
  const ns = "http://www.w3.org/2000/svg";
  const W = 520, H = 240, L = 40, B = 30;
  svg.replaceChildren();
  const mk = (tag, attrs) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); svg.append(n); return n; };
  mk("rect", { x: 0, y: 0, width: W, height: H, fill: "#fff" });
  mk("line", { x1: L, y1: H - B, x2: W - 10, y2: H - B, stroke: "#555" });
  mk("line", { x1: L, y1: 10, x2: L, y2: H - B, stroke: "#555" });
  const pts = curve.filter((p) => p.accuracy != null);
  const maxX = Math.max(10, ...curve.map((p) => p.labels));
  const sx = (x) => L + (x / maxX) * (W - L - 20), sy = (y) => H - B - y * (H - B - 20);
  for (const t of [0, 0.5, 1]) { const t1 = mk("text", { x: 4, y: sy(t) + 4, "font-size": 11 }); t1.textContent = `${t * 100}%`; }
  const tx = mk("text", { x: W / 2, y: H - 6, "font-size": 11 }); tx.textContent = "labels";
  if (pts.length) {
    mk("polyline", { points: pts.map((p) => `${sx(p.labels)},${sy(p.accuracy)}`).join(" "), fill: "none", stroke: "#4e79a7", "stroke-width": 2 });
    for (const p of pts) mk("circle", { cx: sx(p.labels), cy: sy(p.accuracy), r: 3, fill: "#4e79a7" });
  } else {
    const t = mk("text", { x: L + 20, y: H / 2, "font-size": 12 }); t.textContent = "no estimate yet: label at least two photos in two classes";
  }
}

// ------------------------------------------------------------------ label errors
$("errors-refresh").addEventListener("click", async () => {
  const r = await api("/api/label-errors");
  grids.errors.show(r.errors.map((e) => ({ photo_id: e.photo_id, title: "", label: e.label,
    note: `suggested ${className(e.suggested)} (quality ${e.quality.toFixed(2)})` })));
  status(`${r.errors.length} doubtful labels among ${r.checked}`);
});

// ------------------------------------------------------------------ embedding map + lasso
const map = { data: null, lasso: [], selected: new Set(), drawing: false };

async function loadMap() {
  if (!CONFIG.has_embeddings) { $("map-info").textContent = "No stored embeddings: run `naturelens embed` first."; return; }
  map.data = await api("/api/map");
  drawMap();
}

function mapXY() {
  const c = $("map"), d = map.data;
  const xs = d.xy.map((p) => p[0]), ys = d.xy.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  return d.xy.map(([x, y]) => [20 + ((x - x0) / (x1 - x0 || 1)) * (c.width - 40), 20 + ((y1 - y) / (y1 - y0 || 1)) * (c.height - 40)]);
}

function drawMap() {
  const c = $("map"), g = c.getContext("2d"), d = map.data;
  g.fillStyle = "#fff"; g.fillRect(0, 0, c.width, c.height);
  if (!d) return;
  const pts = mapXY();
  pts.forEach(([x, y], i) => {
    const k = d.label[i];
    g.fillStyle = k < 0 ? "#b8b8b8" : COLOURS[k % COLOURS.length];
    g.beginPath(); g.arc(x, y, map.selected.has(d.ids[i]) ? 5 : 3, 0, 2 * Math.PI); g.fill();
    if (map.selected.has(d.ids[i])) { g.strokeStyle = "#000"; g.stroke(); }
  });
  if (map.lasso.length > 1) {
    g.strokeStyle = "#222"; g.setLineDash([4, 3]); g.beginPath();
    map.lasso.forEach(([x, y], i) => (i ? g.lineTo(x, y) : g.moveTo(x, y)));
    g.closePath(); g.stroke(); g.setLineDash([]);
  }
  $("map-info").textContent = `${d.ids.length} photos · ${map.selected.size} selected · PCA explains ${(100 * (d.explained[0] + d.explained[1])).toFixed(0)}% of variance`;
  $("legend").replaceChildren(...CLASSES.map((cl, i) => {
    const sw = el("span", { class: "swatch" }); sw.style.background = COLOURS[i % COLOURS.length];
    return el("li", {}, sw, `${KEYS[i] || ""} ${cl.name}`);
  }));
}

function inside([x, y], poly) {
  let hit = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i], [xj, yj] = poly[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}

function canvasPoint(ev) {
  const r = $("map").getBoundingClientRect();
  return [((ev.clientX - r.left) / r.width) * $("map").width, ((ev.clientY - r.top) / r.height) * $("map").height];
}

$("map").addEventListener("mousedown", (ev) => { map.drawing = true; map.lasso = [canvasPoint(ev)]; });
$("map").addEventListener("mousemove", (ev) => { if (map.drawing) { map.lasso.push(canvasPoint(ev)); drawMap(); } });
window.addEventListener("mouseup", () => {
  if (!map.drawing) return;
  map.drawing = false;
  if (map.data && map.lasso.length > 2) {
    const pts = mapXY();
    map.selected = new Set(map.data.ids.filter((_, i) => inside(pts[i], map.lasso)));
  }
  drawMap();
});

async function labelMapSelection(classId, index) {
  const ids = [...map.selected];
  if (!ids.length) { status("draw a lasso around some photos first"); return; }
  await label(ids, classId, "map");
  for (let i = 0; i < map.data.ids.length; i++) if (map.selected.has(map.data.ids[i])) map.data.label[i] = index;
  map.selected.clear(); map.lasso = [];
  drawMap();
}

// ------------------------------------------------------------------ runs, geo, failures
async function loadRuns() {
  const r = await api("/api/runs");
  const head = el("tr", {}, el("th", { text: "run" }), el("th", { text: "method" }), el("th", { text: "status" }),
    ...CLASSES.map((c) => el("th", { text: c.name })));
  $("run-table").replaceChildren(head, ...r.runs.map((run) => el("tr", {}, el("td", { text: run.run_id }),
    el("td", { text: run.method }), el("td", { text: run.status }),
    ...CLASSES.map((c) => el("td", { text: String(run.counts[c.id] || 0) })))));
  $("origin-table").replaceChildren(el("tr", {}, el("th", { text: "origin" }), el("th", { text: "photos" })),
    ...Object.entries(r.labels_by_origin).map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: String(v) }))));
  const geo = await api("/api/geo");
  const c = $("geo"), g = c.getContext("2d");
  g.fillStyle = "#eef2f5"; g.fillRect(0, 0, c.width, c.height);
  const pts = geo.points;
  $("geo-info").textContent = `${geo.total} geotagged photos${pts.length < geo.total ? `, ${pts.length} drawn` : ""}`;
  if (!pts.length) return;
  const lats = pts.map((p) => p[0]), lons = pts.map((p) => p[1]);
  const [a0, a1, o0, o1] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
  for (const [lat, lon, k] of pts) {
    g.fillStyle = k < 0 ? "#888" : COLOURS[k % COLOURS.length];
    g.beginPath();
    g.arc(20 + ((lon - o0) / (o1 - o0 || 1)) * (c.width - 40), 20 + ((a1 - lat) / (a1 - a0 || 1)) * (c.height - 40), 3, 0, 2 * Math.PI);
    g.fill();
  }
}

async function loadFailed() {
  const r = await api("/api/failures");
  $("failed-table").replaceChildren(el("tr", {}, el("th", { text: "reference" }), el("th", { text: "reason" }), el("th", { text: "detail" })),
    ...r.failures.map((f) => el("tr", {}, el("td", { text: f.ref }), el("td", { text: f.reason || "" }), el("td", { text: f.detail || "" }))));
}

// ------------------------------------------------------------------ tabs + keyboard
let tab = "photos";
const loaders = { photos: loadPhotos, queue: loadQueue, errors: async () => {}, map: loadMap, runs: loadRuns, failed: loadFailed };

function showTab(name) {
  tab = name;
  closeDetail();
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = s.id !== `tab-${name}`; });
  loaders[name]();
}
document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));

document.addEventListener("keydown", async (ev) => {
  const t = ev.target;
  if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) return;
  const grid = grids[tab];
  const k = KEYS.indexOf(ev.key);
  // A class key labels; Delete or Backspace withdraws the label (kept in the history).
  const withdraw = (ev.key === "Delete" || ev.key === "Backspace") && tab !== "map";
  if ((withdraw || (k >= 0 && k < CLASSES.length)) && !ev.ctrlKey && !ev.metaKey && !ev.altKey) {
    ev.preventDefault();
    const classId = withdraw ? null : CLASSES[k].id;
    if (tab === "map") { await labelMapSelection(classId, k); return; }
    if (!grid) return;
    if (detailOf) {
      const { grid: g, i } = detailOf;
      await label([g.rows[i].photo_id], classId, `${g.source}-detail`);
      g.rows[i].label = classId;
      g.redraw([g.rows[i].photo_id]);
      await openDetail(g, Math.min(i + 1, g.rows.length - 1));
    } else {
      await grid.labelKey(classId);
    }
    return;
  }
  if (ev.key === "z" || ev.key === "u" || ((ev.ctrlKey || ev.metaKey) && ev.key === "z")) { ev.preventDefault(); await undo(); return; }
  if (ev.key === "Escape") { if (detailOf) closeDetail(); else if (grid) { grid.selected.clear(); grid.mark(); } map.selected.clear(); if (tab === "map") drawMap(); return; }
  if (!grid) return;
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: grid.columns(), ArrowUp: -grid.columns() }[ev.key];
  if (step !== undefined) {
    ev.preventDefault();
    if (detailOf) await openDetail(detailOf.grid, Math.max(0, Math.min(detailOf.grid.rows.length - 1, detailOf.i + Math.sign(step))));
    else grid.move(step);
    return;
  }
  if (ev.key === " ") { ev.preventDefault(); grid.toggle(grid.cursor); grid.mark(); return; }
  if (ev.key === "Enter" && grid.rows.length) { ev.preventDefault(); await openDetail(grid, grid.cursor); }
});

// ------------------------------------------------------------------ start
(function start() {
  $("user").value = CONFIG.user;
  const runSel = $("f-run");
  for (const r of CONFIG.runs) runSel.append(el("option", { value: r.run_id, text: `${r.run_id} (${r.status})` }));
  const done = CONFIG.runs.filter((r) => r.status === "done");
  if (done.length) runSel.value = done[done.length - 1].run_id;
  document.querySelectorAll(".class-select").forEach((s) => { for (const c of CLASSES) s.append(el("option", { value: c.id, text: c.name })); });
  $("keys").textContent = "Keys: " + CLASSES.map((c, i) => `${KEYS[i] || "-"} ${c.name}`).join(" · ") +
    " · Delete remove the label · arrows move · space select · Enter details · Esc close · z undo";
  loadPhotos();
})();
