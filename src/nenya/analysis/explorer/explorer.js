// nenya explorer: the page's behaviour and its scripting API (window.nenya).
// Widgets call window.nenya._ui(action, widget); the API and the widgets share the same functions.
// Every id and value shown is escaped (esc) or set as text: nothing from the data becomes markup.
// Before Bokeh builds the views: WebGL where the browser has a hardware GL, else the canvas backend
// (software WebGL, as in headless browsers, is several times slower than canvas). #backend=webgl|canvas
// in the page's URL overrides. This runs while the page is parsed, before Bokeh reads its document.
(function chooseBackend() {
  let backend = "webgl", renderer = "";
  try {
    const c = document.createElement("canvas");
    const gl = c.getContext("webgl2") || c.getContext("webgl");
    if (!gl) backend = "canvas";
    else {
      const info = gl.getExtension("WEBGL_debug_renderer_info");
      renderer = info ? String(gl.getParameter(info.UNMASKED_RENDERER_WEBGL)) : "";
      if (/swiftshader|llvmpipe|softpipe|software/i.test(renderer)) backend = "canvas";
      const lose = gl.getExtension("WEBGL_lose_context");
      if (lose) lose.loseContext();
    }
  } catch (e) { backend = "canvas"; }
  const forced = (location.hash.match(/backend=(webgl|canvas)/) || [])[1];
  if (forced) backend = forced;
  window.nenyaBackend = { backend, renderer };
  if (backend === "webgl") return;
  const key = '"output_backend":"webgl"';
  for (const el of document.querySelectorAll('script[type="application/json"]')) {
    if (el.id !== "nenya-data" && el.textContent.includes(key)) el.textContent = el.textContent.split(key).join('"output_backend":"canvas"');
  }
})();

(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("nenya-data").textContent);
  const api = { ready: false };
  window.nenya = api;

  function esc(s) {
    return String(s).replace(/[&<>"'`]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "`": "&#96;" })[c]);
  }
  function b64(s, T) {
    const bin = atob(s);
    const buf = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) buf[i] = bin.charCodeAt(i);
    return new T(buf.buffer);
  }
  const N = DATA.n, K = DATA.k;
  const NBR = b64(DATA.nbr, Int32Array), NSC = b64(DATA.nbr_score, Float32Array);
  const THUMB = new Map();
  DATA.thumb_rows.forEach((r, j) => THUMB.set(r, j));
  const COLS = DATA.columns;
  const byName = new Map(COLS.map((c) => [c.name, c]));
  const state = { filters: {}, mask: new Uint8Array(N).fill(1), syncing: false };
  let doc, src, flt, marks, tableSrc, idIndex = null;

  const model = (name) => doc.get_model_by_name(name);
  const column = (c) => src.data[c.field];
  const ids = () => src.data.id;

  // -- filters ----------------------------------------------------------------------------
  function toNumber(v) {
    if (v === null || v === undefined) return NaN;
    if (typeof v === "string") { const t = Date.parse(v); return isNaN(t) ? Number(v) : t; }
    return Number(v);
  }
  function normalise(c, spec) {
    if (c.kind === "cat") {
      if (!Array.isArray(spec)) throw new Error(`filter on ${c.name}: give a list of values`);
      return { values: spec.map(String) };
    }
    if (!Array.isArray(spec) || spec.length !== 2) throw new Error(`filter on ${c.name}: give [min, max]`);
    let lo = toNumber(spec[0]), hi = toNumber(spec[1]);
    if (spec[0] === null) lo = -Infinity;
    if (spec[1] === null) hi = Infinity;
    return { range: [lo, hi], leftOpen: false };
  }
  function computeMask() {
    const mask = new Uint8Array(N).fill(1);
    for (const [name, f] of Object.entries(state.filters)) {
      const v = column(byName.get(name));
      if (f.range) {
        const lo = f.range[0], hi = f.range[1], open = f.leftOpen;
        for (let i = 0; i < N; i++) {
          if (!mask[i]) continue;
          const x = v[i];
          if (!((open ? x > lo : x >= lo) && x <= hi)) mask[i] = 0;
        }
      } else {
        const set = new Set(f.values);
        for (let i = 0; i < N; i++) if (mask[i] && !set.has(v[i])) mask[i] = 0;
      }
    }
    return mask;
  }
  function applyFilters() {
    state.mask = computeMask();
    const bools = new Array(N);
    let shown = 0;
    for (let i = 0; i < N; i++) { bools[i] = state.mask[i] === 1; shown += state.mask[i]; }
    flt.booleans = bools;
    const sel = src.selected.indices.filter((i) => state.mask[i]);
    if (sel.length !== src.selected.indices.length) src.selected.indices = sel;
    else onSelect();
    const active = Object.keys(state.filters);
    model("nenya-note").text = esc(DATA.note) + (active.length
      ? `<br>filters (${esc(active.join(", "))}): ${shown.toLocaleString()} of ${N.toLocaleString()} shown` : "");
  }
  function widgetOf(c) { return model("filter:" + c.field); }
  function syncWidget(c) {
    const w = widgetOf(c);
    if (!w) return;
    const f = state.filters[c.name];
    state.syncing = true;
    try {
      if (c.kind === "cat") w.value = f ? f.values.slice() : [];
      else w.value = f ? [Math.max(f.range[0], w.start), Math.min(f.range[1], w.end)] : [w.start, w.end];
    } finally { state.syncing = false; }
  }
  function setFilter(name, spec, leftOpen) {
    const c = byName.get(name);
    if (!c || !c.filter) throw new Error(`no filter for column ${name}; columns: ${COLS.filter((c) => c.filter).map((c) => c.name).join(", ")}`);
    if (spec === null || spec === undefined) delete state.filters[name];
    else { const f = normalise(c, spec); if (leftOpen) f.leftOpen = true; state.filters[name] = f; }
    syncWidget(c);
    applyFilters();
    return shownCount();
  }
  function shownCount() { let s = 0; for (let i = 0; i < N; i++) s += state.mask[i]; return s; }
  function clearFilters() {
    state.filters = {};
    COLS.forEach((c) => { if (c.filter) syncWidget(c); });
    const dt = model("nenya-dt");
    if (dt) { state.syncing = true; dt.value = "all"; state.syncing = false; }
    applyFilters();
  }
  function widgetFilter(w) {
    const c = COLS.find((c) => "filter:" + c.field === w.name);
    if (c.kind === "cat") {
      if (w.value.length) state.filters[c.name] = { values: w.value.map(String) }; else delete state.filters[c.name];
    } else {
      const v = w.value_throttled || w.value;
      if (v[0] <= w.start && v[1] >= w.end) delete state.filters[c.name];
      else state.filters[c.name] = { range: [v[0], v[1]], leftOpen: false };
    }
    applyFilters();
  }

  // -- selection ----------------------------------------------------------------------------
  function pointInPolygon(px, py, poly) {
    let inside = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const xi = poly[i][0], yi = poly[i][1], xj = poly[j][0], yj = poly[j][1];
      if ((yi > py) !== (yj > py) && px < ((xj - xi) * (py - yi)) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }
  function fieldsOf(view) {
    if (view === "projection") return ["x", "y"];
    if (view === "map" && DATA.views.includes("map")) return ["lon", "lat"];
    throw new Error(`unknown view ${view}; views: ${DATA.views.join(", ")}`);
  }
  function select(view, polygon) {
    const [xf, yf] = fieldsOf(view);
    const xs = src.data[xf], ys = src.data[yf], out = [];
    for (let i = 0; i < N; i++) if (state.mask[i] && pointInPolygon(xs[i], ys[i], polygon)) out.push(i);
    src.selected.indices = out;
    return out.length;
  }
  function selectedRows() {
    return src.selected.indices.filter((i) => state.mask[i]).sort((a, b) => a - b);
  }
  function thumbImg(i, cls) {
    const j = THUMB.get(i);
    return j === undefined ? "" : `<img class="${cls || "g"}" src="${DATA.thumbs[j]}" title="${esc(ids()[i])}">`;
  }
  function display(c, v) {
    if (c.kind === "date") return Number.isFinite(v) ? new Date(v).toISOString().replace(".000Z", "Z") : "";
    if (c.kind === "num") return Number.isFinite(v) ? v : NaN;
    return v;
  }
  function onSelect() {
    const rows = selectedRows();
    const gallery = rows.filter((i) => THUMB.has(i)).slice(0, DATA.max_gallery);
    model("nenya-selinfo").text = `<h3>${rows.length.toLocaleString()} selected</h3>` +
      (rows.length > DATA.max_table ? `<span class="nenya-note">the table lists the first ${DATA.max_table}; Export CSV has all</span>` : "");
    model("nenya-gallery").text = gallery.map((i) => thumbImg(i)).join("");
    const first = rows.slice(0, DATA.max_table), data = { id: first.map((i) => ids()[i]) };
    COLS.forEach((c) => { const v = column(c); data[c.field] = first.map((i) => display(c, v[i])); });
    tableSrc.data = data;
  }

  // -- export ---------------------------------------------------------------------------------
  function csvCell(v, isText) {
    let s = v === null || v === undefined ? "" : String(v);
    if (isText && /^[=+@\t\r]/.test(s)) s = "'" + s; // a spreadsheet must not run a cell as a formula
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  function exportCsv() {
    const rows = selectedRows();
    const lines = [["id", ...COLS.map((c) => c.name)].map((s) => csvCell(s, true)).join(",")];
    const cols = COLS.map((c) => [c, column(c)]);
    for (const i of rows) {
      const cells = [csvCell(ids()[i], true)];
      for (const [c, v] of cols) {
        const x = v[i];
        if (c.kind === "num") cells.push(Number.isFinite(x) ? String(x) : "");
        else if (c.kind === "date") cells.push(Number.isFinite(x) ? new Date(x).toISOString() : "");
        else cells.push(csvCell(x === "(missing)" ? "" : x, true));
      }
      lines.push(cells.join(","));
    }
    return lines.join("\n") + "\n";
  }
  function download() {
    const blob = new Blob([exportCsv()], { type: "text/csv" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "nenya-selection.csv";
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  // -- colour ---------------------------------------------------------------------------------
  function setColour(name) {
    const c = byName.get(name);
    if (!c || c.kind === "text") throw new Error(`cannot colour by ${name}`);
    const mapper = model("cmap:" + c.field);
    for (const v of DATA.views) {
      const r = model("points:" + v);
      for (const g of [r.glyph, r.selection_glyph, r.nonselection_glyph, r.hover_glyph, r.muted_glyph]) {
        if (g && typeof g === "object" && "fill_color" in g) g.fill_color = { field: c.field, transform: mapper };
      }
    }
    const bar = model("nenya-colorbar");
    const legend = model("nenya-legend");
    if (c.kind === "cat") {
      if (bar) bar.visible = false;
      legend.text = c.levels.map((l, k) => `<span class="nenya-swatch" style="background:${esc(mapper.palette[k % mapper.palette.length])}"></span>${esc(l)}`).join(" ");
    } else {
      if (bar) { bar.color_mapper = mapper; bar.title = c.name; bar.visible = true; }
      legend.text = c.kind === "date" ? `${esc(display(c, c.lo))} .. ${esc(display(c, c.hi))}` : "";
    }
    const w = model("nenya-colour");
    if (w && w.value !== name) { state.syncing = true; w.value = name; state.syncing = false; }
  }

  // -- neighbours, hover, find ---------------------------------------------------------------
  function rowOf(id) {
    if (!idIndex) { idIndex = new Map(); ids().forEach((v, i) => idIndex.set(String(v), i)); }
    return idIndex.get(String(id));
  }
  function neighbourRows(i) {
    const out = [];
    for (let j = 0; j < K; j++) { const r = NBR[i * K + j]; if (r >= 0) out.push([r, NSC[i * K + j]]); }
    return out;
  }
  function mark(rows) {
    const d = { x: [], y: [], lon: [], lat: [], kind: [] };
    rows.forEach(([r, kind]) => {
      d.x.push(src.data.x[r]); d.y.push(src.data.y[r]); d.kind.push(kind);
      d.lon.push(src.data.lon ? src.data.lon[r] : NaN); d.lat.push(src.data.lat ? src.data.lat[r] : NaN);
    });
    marks.data = d;
  }
  function showNeighbours(i) {
    const nb = neighbourRows(i);
    mark([[i, "point"], ...nb.map(([r]) => [r, "neighbour"])]);
    const items = nb.map(([r, s]) => `<div>${thumbImg(r, "n")} ${esc(ids()[r])} <span class="nenya-note">${esc(s.toPrecision(4))}</span></div>`);
    model("nenya-nbrs").text = `<h3>${K ? "neighbours of" : "point"} ${esc(ids()[i])}</h3>` +
      (K ? `<div class="nenya-note">${esc(DATA.metric)}, among the points shown</div>` : "") + items.join("");
    return nb.map(([r]) => ids()[r]);
  }
  function nearest(view, x, y) {
    const [xf, yf] = fieldsOf(view);
    const xs = src.data[xf], ys = src.data[yf], fig = model(view);
    const sx = (fig.x_range.end - fig.x_range.start) || 1, sy = (fig.y_range.end - fig.y_range.start) || 1;
    let best = -1, bd = Infinity;
    for (let i = 0; i < N; i++) {
      if (!state.mask[i]) continue;
      const dx = (xs[i] - x) / sx, dy = (ys[i] - y) / sy, d = dx * dx + dy * dy;
      if (d < bd) { bd = d; best = i; }
    }
    return bd < 0.02 * 0.02 ? best : -1;
  }
  // the hover card next to the pointer: built with DOM calls, ids set as text, images only our data: URIs
  let card = null;
  function hoverCard() {
    if (card) return card;
    card = document.createElement("div");
    card.id = "nenya-hover";
    card.style.cssText = "position:fixed;pointer-events:none;z-index:1000;display:none;background:#fff;" +
      "border:1px solid #888;border-radius:3px;padding:4px;font:12px sans-serif;box-shadow:0 1px 4px #0003;max-width:220px";
    const img = document.createElement("img");
    img.style.cssText = "width:96px;height:96px;image-rendering:pixelated;display:block";
    const cap = document.createElement("div");
    card.append(img, cap);
    document.body.appendChild(card);
    return card;
  }
  function showCard(i, j, view, geometry) {
    const el = hoverCard(), img = el.firstChild, cap = el.lastChild;
    const v = window.Bokeh.index.find_one(model(view));
    if (!v || !geometry) return;
    const r = v.el.getBoundingClientRect();
    img.style.display = j >= 0 ? "block" : "none";
    if (j >= 0) img.src = DATA.thumbs[THUMB.get(j)];
    cap.textContent = String(ids()[i]) + (j >= 0 && j !== i ? " (nearest image)" : "");
    el.style.left = `${Math.min(r.left + geometry.sx + 14, window.innerWidth - 230)}px`;
    el.style.top = `${Math.max(r.top + geometry.sy - 120, 0)}px`;
    el.style.display = "block";
  }
  function hideCard() { if (card) card.style.display = "none"; }
  function preview(i, view, geometry) {
    let j = THUMB.has(i) ? i : -1;
    if (j < 0 && DATA.thumb_rows.length) { // the nearest point that has a thumbnail
      const [xf, yf] = fieldsOf(view), xs = src.data[xf], ys = src.data[yf];
      let bd = Infinity;
      for (const r of DATA.thumb_rows) {
        const d = (xs[r] - xs[i]) ** 2 + (ys[r] - ys[i]) ** 2;
        if (d < bd) { bd = d; j = r; }
      }
    }
    const c = byName.get(model("nenya-colour") ? model("nenya-colour").value : "");
    const value = c ? ` <span class="nenya-note">${esc(c.name)}: ${esc(display(c, column(c)[i]))}</span>` : "";
    model("nenya-preview").text = `<div>${esc(ids()[i])}${value}</div>` + (j >= 0 ? thumbImg(j, "p") + (j !== i ? `<div class="nenya-note">nearest image: ${esc(ids()[j])}</div>` : "") : "");
    showCard(i, j, view, geometry);
  }
  function find(id) {
    const i = rowOf(id);
    if (i === undefined) { model("nenya-note").text = esc(DATA.note) + `<br>no id ${esc(id)} among the points shown`; return false; }
    for (const v of DATA.views) {
      const [xf, yf] = fieldsOf(v), fig = model(v), x = src.data[xf][i], y = src.data[yf][i];
      const hx = (fig.x_range.end - fig.x_range.start) / 2, hy = (fig.y_range.end - fig.y_range.start) / 2;
      fig.x_range.setv({ start: x - hx, end: x + hx });
      fig.y_range.setv({ start: y - hy, end: y + hy });
    }
    showNeighbours(i);
    return true;
  }

  // -- the UI's entry point and the API ------------------------------------------------------
  api._ui = function (action, w) {
    if (state.syncing || !api.ready) return;
    if (action === "filter") widgetFilter(w);
    else if (action === "colour") setColour(w.value);
    else if (action === "find") find(w.value.trim());
    else if (action === "dt") {
      const b = DATA.dt_bins[w.value];
      if (w.value === "all") setFilter(DATA.dt_column, null);
      else setFilter(DATA.dt_column, [b[0], b[1]], true);
    } else if (action === "clearFilters") clearFilters();
    else if (action === "clearSelection") { src.selected.indices = []; mark([]); }
    else if (action === "export") download();
  };
  api._hover = function (cb_data, view) {
    const idx = cb_data.index && cb_data.index.indices;
    if (idx && idx.length) preview(idx[0], view, cb_data.geometry);
    else hideCard();
  };
  api._onSelect = function () { if (api.ready) onSelect(); };
  api._tap = function (ev, view) {
    const i = nearest(view, ev.x, ev.y);
    if (i >= 0) showNeighbours(i);
  };
  api.views = () => DATA.views.slice();
  api.select = (view, polygon) => select(view, polygon);
  api.selectedIds = () => selectedRows().map((i) => ids()[i]);
  api.setFilter = (name, spec) => setFilter(name, spec, false);
  api.clearFilters = () => { clearFilters(); return shownCount(); };
  api.clearSelection = () => { src.selected.indices = []; };
  api.shownIds = () => { const out = []; for (let i = 0; i < N; i++) if (state.mask[i]) out.push(ids()[i]); return out; };
  api.exportCsv = () => exportCsv();
  api.setColour = (name) => setColour(name);
  api.find = (id) => find(id);
  api.neighbours = (id) => { const i = rowOf(id); return i === undefined ? null : showNeighbours(i); };
  // for tests: the text a panel shows (parsed inertly: nothing in it loads or runs), rows with a thumbnail
  api._text = (name) => new DOMParser().parseFromString(model(name).text, "text/html").body.textContent.trim();
  api._thumbRows = () => DATA.thumb_rows.slice();
  api.backend = () => window.nenyaBackend.backend;
  api.columns = () => COLS.map((c) => ({ name: c.name, kind: c.kind, filter: c.filter }));

  function start() {
    const Bokeh = window.Bokeh;
    if (!Bokeh || !Bokeh.documents || !Bokeh.documents.length || !Bokeh.documents[0].get_model_by_name("nenya-points")) {
      setTimeout(start, 20);
      return;
    }
    doc = Bokeh.documents[0];
    src = model("nenya-points");
    flt = model("nenya-filter");
    marks = model("nenya-marks");
    tableSrc = model("nenya-table-source");
    model("nenya-title").text = `<h2 style="margin:4px 0">${esc(DATA.title)}</h2>`;
    model("nenya-note").text = esc(DATA.note);
    if (DATA.colour) setColour(DATA.colour);
    api.ready = true;
    document.body.dataset.nenyaReady = "1";
  }
  start();
})();
