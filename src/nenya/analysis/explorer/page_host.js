// nenya explore: the page as the explorer's host (window.nenyaHost). The data and every computation
// live in the page: filters, selections, exports and neighbours over the points it holds. The side
// panel and window.nenya are nenya.js, shared with nenya serve. How the points' source holds the
// columns (codes, compact types, ids, the palette index "colour"): page.py's docstring.
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
  if (window.nenyaEmbed) { window.nenyaBackend = { backend: "webgl", renderer, painted: 0 }; return; } // a notebook: its views are built (WebGL)
  const forced = (location.hash.match(/backend=(webgl|canvas)/) || [])[1];
  if (forced) backend = forced;
  window.nenyaBackend = { backend, renderer, painted: 0 };
  if (backend === "webgl") return;
  const key = '"output_backend":"webgl"';
  for (const el of document.querySelectorAll('script[type="application/json"]')) {
    if (el.id !== "nenya-data" && el.textContent.includes(key)) el.textContent = el.textContent.split(key).join('"output_backend":"canvas"');
  }
})();

// The canvas backend's points. Bokeh draws each marker as a path of its own (translate, rect, fill,
// a colour string: about a second for both views at 250,000 points, at every pan, filter, selection
// or change of colour). Square markers of one size, without outline or hatch, are drawn here instead:
// each paint writes the squares' pixels into one image, blended in Bokeh's order with Bokeh's
// colours and alphas, and puts it on the canvas (the frame's clip applies): Bokeh's picture, but for
// the squares' edges, which fall on whole pixels. Anything else (other markers, outlines, the ringed
// neighbours, legends, the SVG backend) is Bokeh's own drawing; WebGL does not come here. This
// replaces a method of Bokeh's (ScatterView._paint) and checks what it reads first: with a Bokeh
// that names things otherwise, the page falls back to Bokeh's drawing.
// window.nenyaBackend.painted counts the paints done here.
(function fastSquares() {
  let View = null;
  try { View = window.Bokeh.Models.get("Scatter").prototype.default_view; } catch (e) { return; }
  const little = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1; // pixels as 32-bit words: a b g r
  if (!View || typeof View.prototype._paint !== "function" || View.prototype._paint.nenya || !little) return; // once (a notebook runs this at each display)
  const own = View.prototype._paint;
  let image = null, words = null, layer = null;
  const scalar = (p, v) => p && typeof p.is_Scalar === "function" && p.is_Scalar() && (v === undefined || p.value === v);
  function fits(g, ctx) {
    const v = g.visuals;
    return typeof ctx.getTransform === "function" && typeof ctx.drawImage === "function" && g.sx && g.sy &&
      scalar(g.marker, "square") && scalar(g.angle, 0) && g.size && g.fill_color && g.fill_alpha &&
      v && v.fill && !(v.line && v.line.doit) && !(v.hatch && v.hatch.doit);
  }
  // one square of colour (r, g, b) and opacity a (0..1) under the pixels words[o] of rows y0..y1,
  // x0..x1: the points go from the last to the first (the last drawn is on top, as in Bokeh), so that
  // a pixel already opaque is passed over (dense clusters cost little)
  function square(x0, x1, y0, y1, W, r, g, b, a) {
    const word = ((Math.round(a * 255) << 24) | (b << 16) | (g << 8) | r) >>> 0;
    for (let yy = y0; yy < y1; yy++) {
      for (let o = yy * W + x0, end = yy * W + x1; o < end; o++) {
        const d = words[o], da = d >>> 24;
        if (da === 255) continue;
        if (da === 0) { words[o] = word; continue; }
        const top = da / 255, add = a * (1 - top), out = top + add, k = top / out, s = add / out;
        words[o] = ((((out * 255 + 0.5) | 0) << 24) | (((b * s + ((d >>> 16) & 255) * k) + 0.5) << 16) |
          (((g * s + ((d >>> 8) & 255) * k) + 0.5) << 8) | ((r * s + (d & 255) * k) + 0.5)) >>> 0;
      }
    }
  }
  function squares(gv, ctx, indices) {
    const m = ctx.getTransform(), W = ctx.canvas.width, H = ctx.canvas.height;
    if (m.b !== 0 || m.c !== 0 || !(W > 0 && H > 0)) return false;
    if (!image || image.width !== W || image.height !== H) {
      image = new ImageData(W, H);
      words = new Uint32Array(image.data.buffer);
      layer = document.createElement("canvas");
      layer.width = W; layer.height = H;
    }
    const { sx, sy, size, fill_color: fc, fill_alpha: fa } = gv;
    let bx0 = W, by0 = H, bx1 = 0, by1 = 0;
    for (let k = indices.length - 1; k >= 0; k--) {
      const i = indices[k], x = m.a * sx[i] + m.e, y = m.d * sy[i] + m.f, s = size.get(i) / 2;
      if (!Number.isFinite(x + y + s)) continue;
      const x0 = Math.max(Math.round(x - s * m.a), 0), x1 = Math.min(Math.round(x + s * m.a), W);
      const y0 = Math.max(Math.round(y - s * m.d), 0), y1 = Math.min(Math.round(y + s * m.d), H);
      if (x0 >= x1 || y0 >= y1) continue;
      const c = fc.get(i), a = Math.min(255, Math.max(0, Math.round((c & 255) * fa.get(i)))) / 255;
      if (a === 0) continue;
      square(x0, x1, y0, y1, W, c >>> 24, (c >>> 16) & 255, (c >>> 8) & 255, a);
      if (x0 < bx0) bx0 = x0;
      if (y0 < by0) by0 = y0;
      if (x1 > bx1) bx1 = x1;
      if (y1 > by1) by1 = y1;
    }
    if (bx1 > bx0 && by1 > by0) {
      const w = bx1 - bx0, h = by1 - by0;
      layer.getContext("2d").putImageData(image, 0, 0, bx0, by0, w, h);
      ctx.save();
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.drawImage(layer, bx0, by0, w, h, bx0, by0, w, h);
      ctx.restore();
      for (let yy = by0; yy < by1; yy++) words.fill(0, yy * W + bx0, yy * W + bx1);
    }
    return true;
  }
  let failed = false;
  function drawn(g, ctx, indices) {
    if (failed || !fits(g, ctx)) return false;
    try { return squares(g, ctx, indices); } catch (e) { failed = true; image = null; return false; } // Bokeh's from now on
  }
  View.prototype._paint = function (ctx, indices, data) {
    if (data == null && drawn(this, ctx, indices)) window.nenyaBackend.painted++;
    else own.call(this, ctx, indices, data);
  };
  View.prototype._paint.nenya = true;
})();

(function () {
  "use strict";
  // in a notebook (notebook.py) the script's data and its document come with the script, not in the page
  const EMBED = window.nenyaEmbed || null;
  window.nenyaEmbed = null;
  const DATA = EMBED ? EMBED.data : JSON.parse(document.getElementById("nenya-data").textContent);
  const N = DATA.n, K = DATA.k, P = DATA.palette;
  const THUMB = new Map();
  DATA.thumb_rows.forEach((r, j) => THUMB.set(r, j));
  const COLS = DATA.columns;
  const byName = new Map(COLS.map((c) => [c.name, c]));
  const state = { filters: {}, mask: new Uint8Array(N).fill(1) };
  let doc, src, flt, marks, idIndex = null, NBR = null, NSC = null;
  const model = (name) => doc.get_model_by_name(name);
  const column = (c) => src.data[c.field]; // a category's: codes into c.levels
  const valueAt = (c, v, i) => (c.kind === "cat" ? c.levels[v[i]] : v[i]);
  const PREFIX = DATA.id_prefixes;
  function idAt(i) {
    if (!PREFIX) return src.data.id[i];
    const n = src.data.idn[i];
    return n < 0 ? PREFIX[src.data.idp[i]] : PREFIX[src.data.idp[i]] + n;
  }
  // the neighbour lists: their bytes come grouped by significance (page.py's _shuffled)
  function regroup(bytes, T) {
    const w = T.BYTES_PER_ELEMENT, n = bytes.length / w, out = new Uint8Array(bytes.length);
    for (let b = 0; b < w; b++) for (let i = 0, o = b * n; i < n; i++) out[i * w + b] = bytes[o + i];
    return new T(out.buffer);
  }
  function neighbourLists() {
    if (!NBR) {
      const d = model("nenya-neighbours").data;
      NBR = regroup(d.rows, Int32Array);
      NSC = regroup(d.scores, Float32Array);
    }
  }
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
        const c = byName.get(name), set = new Set(f.values), ok = new Uint8Array(c.levels.length);
        c.levels.forEach((l, k) => { ok[k] = set.has(l) ? 1 : 0; });
        for (let i = 0; i < N; i++) if (mask[i] && !ok[v[i]]) mask[i] = 0;
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
    if (view === "map" && DATA.views.includes("map")) return DATA.map_fields;
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
      ids: first.map(idAt),
      cells: COLS.map((c) => { const v = column(c); return first.map((i) => valueAt(c, v, i)); }),
      gallery: rows.filter((i) => THUMB.has(i)).slice(0, DATA.max_gallery).map((i) => [i, idAt(i)]),
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
      if (ch.kind === "cat") out[ch.field] = [v, c.levels.length]; // the level codes are the bins
      else out[ch.field] = [binNumbers(v, ch.lo, ch.hi, ch.n), ch.n];
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
    if (S.lat_edges && DATA.map_fields) {
      const e = S.lat_edges;
      out.lat = [binNumbers(src.data[DATA.map_fields[1]], e[0], e[e.length - 1], e.length - 1), e.length - 1];
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
      const cells = [csvCell(idAt(i), true)];
      for (const [c, v] of cols) {
        const x = valueAt(c, v, i);
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
  // each point's index into the page's one palette (page.py's colour_codes: Bokeh's LinearColorMapper
  // over Viridis for numbers and dates, the category colours by level, grey for no value)
  function colourCodes(c) {
    const v = column(c), out = new Uint16Array(N);
    if (c.kind === "cat") {
      for (let i = 0; i < N; i++) out[i] = P.cat + (v[i] % P.ncat);
      return out;
    }
    const lo = c.lo !== null ? c.lo : 0, hi = c.hi !== null && c.hi > lo ? c.hi : lo + 1;
    const norm = 1 / (hi - lo), step = 1 / P.num, last = P.num - 1;
    for (let i = 0; i < N; i++) {
      const x = v[i];
      if (isNaN(x)) out[i] = P.nan;
      else if (x == hi) out[i] = last;
      else out[i] = Math.min(Math.max(Math.floor(((x - lo) * norm) / step), 0), last);
    }
    return out;
  }
  // a change of colour rewrites the one array every glyph draws from: one update of each view, which
  // Bokeh finishes over a few promise turns (resolving after them keeps the panel's own changes that
  // follow from drawing the views a second time)
  function setColour(c) {
    const mapper = model("cmap:" + c.field), codes = colourCodes(c), now = src.data.colour;
    let same = now.length === N;
    for (let i = 0; same && i < N; i++) same = now[i] === codes[i];
    if (!same) {
      now.set(codes);
      src.change.emit();
    }
    const bar = model("nenya-colorbar");
    if (bar && c.kind === "cat") bar.visible = false;
    else if (bar) { bar.color_mapper = mapper; bar.title = c.name; bar.visible = true; }
    return new Promise((done) => setTimeout(done, 0));
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
    if (!idIndex) { idIndex = new Map(); for (let i = 0; i < N; i++) idIndex.set(String(idAt(i)), i); }
    return idIndex.get(String(id));
  }
  function mark(rows) {
    const d = { x: [], y: [], lon: [], lat: [], kind: [] }, [lon, lat] = (DATA.map_fields || []).map((f) => src.data[f]);
    rows.forEach(([r, kind]) => {
      d.x.push(src.data.x[r]); d.y.push(src.data.y[r]); d.kind.push(kind);
      d.lon.push(lon ? lon[r] : NaN); d.lat.push(lat ? lat[r] : NaN);
    });
    marks.data = d;
  }
  function neighbours(id) {
    const i = rowOf(id);
    if (i === undefined) return null;
    const hits = [];
    if (K) neighbourLists();
    for (let j = 0; j < K; j++) {
      const r = NBR[i * K + j];
      if (r >= 0) hits.push({ row: r, id: idAt(r), score: NSC[i * K + j] });
    }
    mark([[i, "point"], ...hits.map((h) => [h.row, "neighbour"])]);
    return { id: idAt(i), label: `${DATA.metric}, among the points shown`, hits };
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
    return bd < 0.02 * 0.02 ? idAt(best) : null;
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
    return { row: i, id: idAt(i), image: j, imageId: j >= 0 ? idAt(j) : null, value: c ? valueAt(c, column(c), i) : null };
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
    document: EMBED ? () => EMBED.document : null,
    backend: () => window.nenyaBackend.backend,
    number: toNumber,
    thumb: (row) => (THUMB.has(row) ? DATA.thumbs[THUMB.get(row)] : null),
    thumbRows: () => DATA.thumb_rows.slice(),
    noteLines,
    select,
    selectBox: (view, x0, x1, y0, y1) => select(view, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]),
    geometry: () => null, // Bokeh's own selection tools select among the points the page holds
    selection,
    selectedIds: () => selectedRows().map(idAt),
    shownIds: () => { const out = []; for (let i = 0; i < N; i++) if (state.mask[i]) out.push(idAt(i)); return out; },
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
