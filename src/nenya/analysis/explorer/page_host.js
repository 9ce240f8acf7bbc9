// nenya explore: the page as the explorer's host (window.nenyaHost). The data and every computation
// live in the page: filters, selections, exports and neighbours over the points it holds. The side
// panel and window.nenya are nenya.js, shared with nenya serve.
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
  const state = { filters: {}, mask: new Uint8Array(N).fill(1) };
  let doc, src, flt, marks, idIndex = null;
  const model = (name) => doc.get_model_by_name(name);
  const column = (c) => src.data[c.field];
  const ids = () => src.data.id;
  const notHere = (what) => () => { throw new Error(`${what} needs nenya serve: this page holds no model`); };

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
    for (let i = 0; i < N; i++) bools[i] = state.mask[i] === 1;
    flt.booleans = bools;
    const sel = src.selected.indices.filter((i) => state.mask[i]);
    if (sel.length !== src.selected.indices.length) setSelected(sel);
    return shownCount();
  }
  function shownCount() { let s = 0; for (let i = 0; i < N; i++) s += state.mask[i]; return s; }
  function setFilter(name, spec, leftOpen) {
    const c = byName.get(name);
    if (spec === null) delete state.filters[name];
    else { const f = normalise(c, spec); if (leftOpen) f.leftOpen = true; state.filters[name] = f; }
    return applyFilters();
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
    setSelected(out);
    return out.length;
  }
  // a selection the API makes: nenya.js redraws the panel once after it, so Bokeh's own change
  // notice (which a mouse lasso also sends) is not answered a second time
  function setSelected(rows) {
    host.quiet = true;
    try { src.selected.indices = rows; } finally { host.quiet = false; }
  }
  function selectedRows() {
    return src.selected.indices.filter((i) => state.mask[i]).sort((a, b) => a - b);
  }
  function selection() {
    const rows = selectedRows(), first = rows.slice(0, DATA.max_table);
    return {
      count: rows.length,
      ids: first.map((i) => ids()[i]),
      cells: COLS.map((c) => { const v = column(c); return first.map((i) => v[i]); }),
      gallery: rows.filter((i) => THUMB.has(i)).slice(0, DATA.max_gallery).map((i) => [i, ids()[i]]),
    };
  }

  // -- statistics: each point's bin in every chart, by the rule of stats.py (the server counts the same)
  let codes = null, shownCounts = null;
  function binNumbers(v, lo, hi, n) {
    const w = hi > lo ? hi - lo : 1, out = new Int16Array(N);
    for (let i = 0; i < N; i++) {
      const x = v[i];
      out[i] = Number.isFinite(x) && x >= lo && x <= hi ? Math.min(Math.floor(((x - lo) / w) * n), n - 1) : -1;
    }
    return out;
  }
  function buildCodes() {
    const S = DATA.stats, out = {};
    for (const ch of S.charts) {
      const c = COLS.find((c) => c.field === ch.field), v = src.data[ch.field];
      if (ch.kind === "cat") {
        const at = new Map(c.levels.map((l, k) => [l, k])), b = new Int16Array(N);
        for (let i = 0; i < N; i++) { const k = at.get(v[i]); b[i] = k === undefined ? -1 : k; }
        out[ch.field] = [b, ch.n];
      } else out[ch.field] = [binNumbers(v, ch.lo, ch.hi, ch.n), ch.n];
    }
    if (S.time) {
      const v = src.data[S.time.field], month = new Int16Array(N), year = new Int16Array(N);
      for (let i = 0; i < N; i++) {
        if (!Number.isFinite(v[i])) { month[i] = year[i] = -1; continue; }
        const d = new Date(v[i]);
        month[i] = d.getUTCMonth();
        year[i] = d.getUTCFullYear() - S.time.y0;
      }
      out.month = [month, 12];
      out.year = [year, S.time.y1 - S.time.y0 + 1];
    }
    if (S.lat_edges && src.data.lat) {
      const e = S.lat_edges;
      out.lat = [binNumbers(src.data.lat, e[0], e[e.length - 1], e.length - 1), e.length - 1];
    }
    return out;
  }
  function countRows(rows) {
    codes = codes || buildCodes();
    const out = {};
    for (const [key, [b, n]] of Object.entries(codes)) {
      const k = new Array(n).fill(0);
      for (const i of rows) { const j = b[i]; if (j >= 0) k[j]++; }
      out[key] = k;
    }
    return out;
  }
  function stats() {
    const sel = selectedRows();
    if (!shownCounts || shownCounts[0] !== state.mask) {
      const rows = [];
      for (let i = 0; i < N; i++) if (state.mask[i]) rows.push(i);
      shownCounts = [state.mask, countRows(rows), rows.length];
    }
    return { shown: shownCounts[2], selected: sel.length, all: shownCounts[1], sel: countRows(sel) };
  }
  function activeFilters() {
    const out = {};
    for (const [name, f] of Object.entries(state.filters)) {
      out[name] = f.values ? { values: f.values.slice() }
        : { range: f.range.map((v) => (Number.isFinite(v) ? v : null)), leftOpen: !!f.leftOpen };
    }
    return out;
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
  function exportUrl() { return URL.createObjectURL(new Blob([exportCsv()], { type: "text/csv" })); }
  function download() {
    const a = document.createElement("a");
    a.href = exportUrl();
    a.download = "nenya-selection.csv";
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  // -- colour, views ----------------------------------------------------------------------------
  function setColour(c) {
    const mapper = model("cmap:" + c.field);
    for (const v of DATA.views) {
      const r = model("points:" + v);
      for (const g of [r.glyph, r.selection_glyph, r.nonselection_glyph, r.hover_glyph, r.muted_glyph]) {
        if (g && typeof g === "object" && "fill_color" in g) g.fill_color = { field: c.field, transform: mapper };
      }
    }
    const bar = model("nenya-colorbar");
    if (bar && c.kind === "cat") bar.visible = false;
    else if (bar) { bar.color_mapper = mapper; bar.title = c.name; bar.visible = true; }
  }
  function moveTo(view, x0, x1, y0, y1) {
    const fig = model(view);
    fig.x_range.setv({ start: x0, end: x1 });
    fig.y_range.setv({ start: y0, end: y1 });
  }
  function setView(view, x0, x1, y0, y1) {
    const [xf, yf] = fieldsOf(view), box = [x0, x1, y0, y1].map(Number);
    if (!box.every(Number.isFinite) || box[0] >= box[1] || box[2] >= box[3]) throw new Error("a view box needs finite x0 < x1 and y0 < y1");
    moveTo(view, ...box);
    const xs = src.data[xf], ys = src.data[yf];
    let n = 0;
    for (let i = 0; i < N; i++) if (state.mask[i] && xs[i] >= box[0] && xs[i] <= box[1] && ys[i] >= box[2] && ys[i] <= box[3]) n++;
    return { drawn: n, in_view: n };
  }

  // -- neighbours, hover, find ---------------------------------------------------------------
  function rowOf(id) {
    if (!idIndex) { idIndex = new Map(); ids().forEach((v, i) => idIndex.set(String(v), i)); }
    return idIndex.get(String(id));
  }
  function mark(rows) {
    const d = { x: [], y: [], lon: [], lat: [], kind: [] };
    rows.forEach(([r, kind]) => {
      d.x.push(src.data.x[r]); d.y.push(src.data.y[r]); d.kind.push(kind);
      d.lon.push(src.data.lon ? src.data.lon[r] : NaN); d.lat.push(src.data.lat ? src.data.lat[r] : NaN);
    });
    marks.data = d;
  }
  function neighbours(id) {
    const i = rowOf(id);
    if (i === undefined) return null;
    const hits = [];
    for (let j = 0; j < K; j++) {
      const r = NBR[i * K + j];
      if (r >= 0) hits.push({ row: r, id: ids()[r], score: NSC[i * K + j] });
    }
    mark([[i, "point"], ...hits.map((h) => [h.row, "neighbour"])]);
    return { id: ids()[i], label: `${DATA.metric}, among the points shown`, hits };
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
    return bd < 0.02 * 0.02 ? ids()[best] : null;
  }
  function pointAt(view, i) {
    let j = THUMB.has(i) ? i : -1;
    if (j < 0 && DATA.thumb_rows.length) { // the nearest point that has a thumbnail
      const [xf, yf] = fieldsOf(view), xs = src.data[xf], ys = src.data[yf];
      let bd = Infinity;
      for (const r of DATA.thumb_rows) {
        const d = (xs[r] - xs[i]) ** 2 + (ys[r] - ys[i]) ** 2;
        if (d < bd) { bd = d; j = r; }
      }
    }
    const c = model("nenya-colour") && byName.get(model("nenya-colour").value);
    return { row: i, id: ids()[i], image: j, imageId: j >= 0 ? ids()[j] : null, value: c ? column(c)[i] : null };
  }
  function find(id) {
    const i = rowOf(id);
    if (i === undefined) return false;
    for (const v of DATA.views) {
      const [xf, yf] = fieldsOf(v), fig = model(v), x = src.data[xf][i], y = src.data[yf][i];
      const hx = (fig.x_range.end - fig.x_range.start) / 2, hy = (fig.y_range.end - fig.y_range.start) / 2;
      moveTo(v, x - hx, x + hx, y - hy, y + hy);
    }
    return true;
  }
  function noteLines() {
    const active = Object.keys(state.filters);
    return active.length ? [DATA.note, `filters (${active.join(", ")}): ${shownCount().toLocaleString()} of ${N.toLocaleString()} shown`] : [DATA.note];
  }

  const host = window.nenyaHost = {
    data: DATA,
    quiet: false,
    start(d) {
      doc = d;
      src = model("nenya-points");
      flt = model("nenya-filter");
      marks = model("nenya-marks");
    },
    backend: () => window.nenyaBackend.backend,
    number: toNumber,
    thumb: (row) => (THUMB.has(row) ? DATA.thumbs[THUMB.get(row)] : null),
    thumbRows: () => DATA.thumb_rows.slice(),
    noteLines,
    select,
    selectBox: (view, x0, x1, y0, y1) => select(view, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]),
    geometry: () => null, // Bokeh's own selection tools select among the points the page holds
    selection,
    selectedIds: () => selectedRows().map((i) => ids()[i]),
    shownIds: () => { const out = []; for (let i = 0; i < N; i++) if (state.mask[i]) out.push(ids()[i]); return out; },
    setFilter,
    clearFilters: () => { state.filters = {}; return applyFilters(); },
    clearSelection: () => { setSelected([]); mark([]); },
    exportCsv,
    exportUrl,
    download,
    setColour,
    setView,
    find,
    neighbours,
    nearest,
    pointAt,
    query: notHere("a query by image"),
    state: () => ({ n: N, shown: shownCount(), selected: selectedRows().length, views: DATA.views.slice() }),
    stats,
    filters: activeFilters,
  };
})();
