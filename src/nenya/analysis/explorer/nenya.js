// nenya explorer: the side panel's behaviour and the scripting API (window.nenya), written once for
// both hosts. The host (window.nenyaHost, defined by the script before this one) says where the data
// and the computations live: in the page (`nenya explore`, page_host.js) or on the server through
// RPC (`nenya serve`, serve_host.js). Every API call returns a Promise; widgets call
// window.nenya._ui(action, widget) and run the same functions as the API.
// Every id and value shown is escaped (esc) or set as text: nothing from the data becomes markup.
(function () {
  "use strict";
  const host = window.nenyaHost;
  const DATA = host.data;
  const COLS = DATA.columns;
  const byName = new Map(COLS.map((c) => [c.name, c]));
  const api = { ready: false };
  window.nenya = api;
  const ui = { syncing: false, colour: null, noteExtra: "", lines: [] };
  let doc = null;
  const model = (name) => doc.get_model_by_name(name);

  function esc(s) {
    return String(s).replace(/[&<>"'`]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "`": "&#96;" })[c]);
  }
  function display(c, v) {
    if (v === null || v === undefined) return "";
    if (c.kind === "date") return typeof v === "number" ? (Number.isFinite(v) ? new Date(v).toISOString().replace(".000Z", "Z") : "") : v;
    if (c.kind === "num") return Number.isFinite(v) ? v : NaN;
    return v;
  }
  function img(row, id, cls) {
    const src = host.thumb(row);
    return src ? `<img class="${cls}" src="${esc(src)}" title="${esc(id)}">` : "";
  }
  function setText(name, html) { const m = model(name); if (m) m.text = html; }

  // -- panels ---------------------------------------------------------------------------------
  function renderNote(lines) {
    if (lines) ui.lines = lines;
    setText("nenya-note", ui.lines.map(esc).join("<br>") + (ui.noteExtra ? `<br>${ui.noteExtra}` : ""));
  }
  async function refreshSelection() {
    const s = await host.selection();
    setText("nenya-selinfo", `<h3>${s.count.toLocaleString()} selected</h3>` + (s.count > DATA.max_table
      ? `<span class="nenya-note">the table lists the first ${DATA.max_table}; Export CSV has all</span>` : ""));
    setText("nenya-gallery", s.gallery.map(([r, id]) => img(r, id, "g")).join(""));
    const data = { id: s.ids.map(String) };
    COLS.forEach((c, k) => { data[c.field] = s.cells[k].map((v) => display(c, v)); });
    model("nenya-table-source").data = data;
    await refreshStats();
    return s.count;
  }

  // -- the selection's statistics and the filters' charts: counts from the host (bins: stats.py) ------
  const S = DATA.stats;
  const MONTHS = "JFMAMJJASOND";
  const orange = "#e6550d", grey = "#bdbdbd";
  function shares(all, sel) {
    return all.map((n, j) => ({ n, k: sel[j], share: n >= S.min_count ? sel[j] / n : null }));
  }
  // the trend line over the years shown: least squares of the yearly share on the year, weighted by its count
  function trendLine(years) {
    const use = years.filter((y) => y.share !== null);
    if (use.length < 2) return null;
    let w = 0, mx = 0, my = 0;
    for (const y of use) { w += y.n; mx += y.n * y.year; my += y.n * y.share; }
    mx /= w; my /= w;
    let sxx = 0, sxy = 0;
    for (const y of use) { sxx += y.n * (y.year - mx) ** 2; sxy += y.n * (y.year - mx) * (y.share - my); }
    if (!(sxx > 0)) return null;
    const slope = sxy / sxx;
    return { slope, intercept: my - slope * mx, per_decade: slope * 10 };
  }
  function computeStats(r) {
    const out = { shown: r.shown, selected: r.selected, share: r.shown ? r.selected / r.shown : null };
    if (S.time) {
      out.month = shares(r.all.month, r.sel.month).map((m, j) => ({ month: j + 1, ...m }));
      out.year = shares(r.all.year, r.sel.year).map((y, j) => ({ year: S.time.y0 + j, ...y }));
      out.trend = trendLine(out.year);
    }
    if (S.lat_edges && r.all.lat) {
      out.lat = shares(r.all.lat, r.sel.lat).map((b, j) => ({ lo: S.lat_edges[j], hi: S.lat_edges[j + 1], ...b }));
    }
    out.hist = {};
    S.charts.forEach((ch) => { const c = COLS.find((c) => c.field === ch.field); out.hist[c.name] = { all: r.all[ch.field], sel: r.sel[ch.field] }; });
    return out;
  }
  const fmt = (v, d) => Number(v).toFixed(d === undefined ? 1 : d);
  // bars of shares (selected over shown per bin), the overall share dashed, bins with too few points hollow
  function shareChart(rows, label, overall, trend) {
    const W = 410, H = 58, top = 4, base = 44, n = rows.length, bw = (W - 30) / n;
    const peak = Math.max(overall || 0, ...rows.map((r) => r.share || 0)) || 1;
    const y = (v) => base - ((base - top) * v) / peak;
    let g = "";
    rows.forEach((r, j) => {
      const x = 28 + j * bw, tip = `<title>${esc(label(r, j))}: ${r.k.toLocaleString()} of ${r.n.toLocaleString()}` +
        (r.share === null ? " (too few to show a share)" : ` (${fmt(100 * r.share)}%)`) + "</title>";
      g += r.share === null
        ? `<rect x="${x + 1}" y="${base - 2}" width="${Math.max(bw - 2, 1)}" height="2" fill="${grey}">${tip}</rect>`
        : `<rect x="${x + 1}" y="${y(r.share)}" width="${Math.max(bw - 2, 1)}" height="${base - y(r.share)}" fill="${orange}">${tip}</rect>`;
    });
    if (overall !== null) g += `<line x1="28" x2="${W - 2}" y1="${y(overall)}" y2="${y(overall)}" stroke="#333" stroke-dasharray="3,2"/>`;
    if (trend) {
      const x0 = rows[0].year, x1 = rows[n - 1].year, at = (t) => trend.intercept + trend.slope * t;
      g += `<line x1="${28 + bw / 2}" x2="${28 + (n - 0.5) * bw}" y1="${y(Math.max(at(x0), 0))}" y2="${y(Math.max(at(x1), 0))}" stroke="#08519c" stroke-width="2"/>`;
    }
    const ticks = rows.map((r, j) => (n <= 18 || j % Math.ceil(n / 12) === 0 ? `<text x="${28 + (j + 0.5) * bw}" y="${H - 2}" font-size="9" text-anchor="middle">${esc(label(r, j, true))}</text>` : "")).join("");
    return `<svg width="${W}" height="${H}" style="display:block">` +
      `<text x="0" y="${top + 8}" font-size="9">${fmt(100 * peak, 0)}%</text><text x="0" y="${base}" font-size="9">0</text>${g}${ticks}</svg>`;
  }
  function renderStats(st) {
    if (!S.time && !S.lat_edges) {
      setText("nenya-stats", `<span class="nenya-note">no date or latitude column: no statistics of the selection</span>`);
      return;
    }
    if (!st.selected) {
      setText("nenya-stats", `<h3>selection statistics</h3><span class="nenya-note">select points (lasso or box) to see their share ` +
        `${S.time ? "by month, by year" : ""}${S.time && S.lat_edges ? " and " : ""}${S.lat_edges ? "by latitude" : ""} among the ${st.shown.toLocaleString()} shown</span>`);
      return;
    }
    let h = `<h3>selection statistics</h3><div class="nenya-note">${st.selected.toLocaleString()} of the ${st.shown.toLocaleString()} shown ` +
      `(${fmt(100 * st.share, 2)}%, dashed); bars: the share of each bin (grey: fewer than ${S.min_count} shown)</div>`;
    if (st.month) h += `<div class="nenya-note">by month of ${esc(S.time.name)}</div>` + shareChart(st.month, (r, j, short) => (short ? MONTHS[j] : `month ${r.month}`), st.share);
    if (st.year) {
      const t = st.trend;
      h += `<div class="nenya-note">by year${t ? `: trend ${t.per_decade >= 0 ? "+" : ""}${fmt(100 * t.per_decade, 2)} points per decade (blue; least squares over the years, weighted by their counts)` : ""}</div>` +
        shareChart(st.year, (r, j, short) => (short ? `'${String(r.year).slice(2)}` : String(r.year)), st.share, t);
    }
    if (st.lat) h += `<div class="nenya-note">by latitude band</div>` + shareChart(st.lat, (r, j, short) => (short ? `${r.lo}` : `${r.lo} to ${r.hi}`), st.share);
    setText("nenya-stats", h);
  }
  // a filter's chart: the points shown (grey) against the selected (orange), on one scale
  function renderHistograms(st) {
    S.charts.forEach((ch) => {
      const c = COLS.find((c) => c.field === ch.field), all = st.hist[c.name].all, sel = st.hist[c.name].sel;
      const W = 410, H = 32, n = all.length, bw = W / n, peak = Math.max(...all, 1);
      const label = (j) => (ch.kind === "cat" ? c.levels[j] : `${display(c, ch.lo + ((ch.hi - ch.lo) * j) / n)} to ${display(c, ch.lo + ((ch.hi - ch.lo) * (j + 1)) / n)}`);
      let g = "";
      for (let j = 0; j < n; j++) {
        const ha = (H * all[j]) / peak, hs = (H * sel[j]) / peak;
        g += `<g><title>${esc(label(j))}: ${all[j].toLocaleString()} shown, ${sel[j].toLocaleString()} selected</title>` +
          `<rect x="${j * bw + 0.5}" y="${H - ha}" width="${Math.max(bw - 1, 0.5)}" height="${ha}" fill="${grey}"/>` +
          (hs > 0 ? `<rect x="${j * bw + 0.5}" y="${H - hs}" width="${Math.max(bw - 1, 0.5)}" height="${hs}" fill="${orange}"/>` : "") + "</g>";
      }
      setText("hist:" + ch.field, `<svg width="${W}" height="${H}" style="display:block">${g}</svg>`);
    });
  }
  async function stats() { return computeStats(await host.stats()); }
  async function refreshStats() {
    const st = await stats();
    ui.stats = st;
    renderStats(st);
    renderHistograms(st);
    return st;
  }

  // -- the `nenya trends` command for the selection (its ids exported as nenya-selection.csv) --------
  const shellWord = (s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : "'" + String(s).replace(/'/g, "'\\''") + "'");
  const queryName = (name) => (/^[A-Za-z_][A-Za-z0-9_]*$/.test(name) ? name : "`" + name.replace(/`/g, "") + "`");
  function queryValue(c, v) {
    if (c.kind === "date") return JSON.stringify(new Date(v).toISOString().replace(/T00:00:00\.000Z$/, "").replace(/\.000Z$/, ""));
    return String(v);
  }
  function within(filters) {
    const parts = [];
    for (const [name, f] of Object.entries(filters)) {
      const c = byName.get(name), col = queryName(name);
      if (f.values) {
        const vals = f.values.filter((v) => v !== "(missing)").map((v) => (c.quoted ? JSON.stringify(v) : v));
        parts.push(`${col} in [${vals.join(", ")}]`);
      } else {
        if (f.range[0] !== null) parts.push(`${col} ${f.leftOpen ? ">" : ">="} ${queryValue(c, f.range[0])}`);
        if (f.range[1] !== null) parts.push(`${col} <= ${queryValue(c, f.range[1])}`);
      }
    }
    return parts.join(" and ");
  }
  async function trendsCommand() {
    if (!S.time) throw new Error("nenya trends needs a date column; this table has none");
    const w = within(await host.filters());
    return ["nenya trends", shellWord(DATA.source || "TABLE"), "--ids nenya-selection.csv"]
      .concat(w ? [`--within ${shellWord(w)}`] : [])
      .concat(S.time.name !== "datetime" ? [`--time ${shellWord(S.time.name)}`] : [])
      .concat(["--output trends-selection"]).join(" ");
  }
  async function writeTrends() {
    const s = await host.state();
    if (!s.selected) { setText("nenya-trends", `<span class="nenya-note">select points first (lasso or box)</span>`); return null; }
    const cmd = await trendsCommand();
    await host.download();
    setText("nenya-trends", `<div class="nenya-note">the selection's ids are downloading as nenya-selection.csv; in that folder run` +
      `${DATA.source ? "" : " (TABLE: the latents or nenya umap's table)"}:</div><code style="user-select:all;word-break:break-all">${esc(cmd)}</code>`);
    return cmd;
  }
  function hits(nb) {
    return `<div class="nenya-note">${esc(nb.label)}</div>` + nb.hits.map((h) =>
      `<div>${img(h.row, h.id, "n")} ${esc(h.id)} <span class="nenya-note">${esc(Number(h.score).toPrecision(4))}</span></div>`).join("");
  }
  function renderNeighbours(nb) {
    setText("nenya-nbrs", `<h3>${DATA.k ? "neighbours of" : "point"} ${esc(nb.id)}</h3>` + (DATA.k ? hits(nb) : ""));
  }
  function renderQuery(q) {
    const how = q.placement.method === "umap-transform" ? "UMAP transform of the fitted model" : "mean position of its neighbours";
    const pic = /^data:image\//.test(q.image || "") ? `<img class="p" src="${esc(q.image)}">` : "";
    setText("nenya-query", `<h3>query ${esc(q.name)}</h3>${pic}<div class="nenya-q">placed by the ${esc(how)}</div>` +
      hits({ label: q.label, hits: q.neighbours }));
  }
  function renderLegend(c) {
    if (c.kind === "cat") {
      setText("nenya-legend", c.levels.map((l, k) =>
        `<span class="nenya-swatch" style="background:${esc(c.colours[k % c.colours.length])}"></span>${esc(l)}`).join(" "));
    } else {
      setText("nenya-legend", `${esc(c.name)}: ${esc(display(c, c.lo))} .. ${esc(display(c, c.hi))}`);
    }
  }

  // -- widgets mirror the state the API sets ---------------------------------------------------
  function synced(fn) { ui.syncing = true; try { fn(); } finally { ui.syncing = false; } }
  function syncFilter(c, spec) {
    const w = model("filter:" + c.field);
    if (!w) return;
    synced(() => {
      if (c.kind === "cat") w.value = spec ? spec.map(String) : [];
      else if (!spec) w.value = [w.start, w.end];
      else {
        const lo = spec[0] === null ? -Infinity : host.number(spec[0]), hi = spec[1] === null ? Infinity : host.number(spec[1]);
        w.value = [Math.max(lo, w.start), Math.min(hi, w.end)];
      }
    });
  }
  function widgetSpec(c, w) {
    if (c.kind === "cat") return w.value.length ? w.value.map(String) : null;
    const v = w.value_throttled || w.value;
    return v[0] <= w.start && v[1] >= w.end ? null : [v[0], v[1]];
  }

  // -- actions (the API, and the widgets through _ui) ---------------------------------------------
  async function setFilter(name, spec, leftOpen) {
    const c = byName.get(name);
    if (!c || !c.filter) throw new Error(`no filter for column ${name}; columns: ${COLS.filter((c) => c.filter).map((c) => c.name).join(", ")}`);
    ui.noteExtra = "";
    const shown = await host.setFilter(name, spec === undefined ? null : spec, !!leftOpen);
    syncFilter(c, spec === undefined ? null : spec);
    renderNote(host.noteLines());
    await refreshSelection();
    return shown;
  }
  async function clearFilters() {
    const shown = await host.clearFilters();
    COLS.forEach((c) => { if (c.filter) syncFilter(c, null); });
    const dt = model("nenya-dt");
    if (dt) synced(() => { dt.value = "all"; });
    ui.noteExtra = "";
    renderNote(host.noteLines());
    await refreshSelection();
    return shown;
  }
  async function setColour(name) {
    const c = byName.get(name);
    if (!c || c.kind === "text") throw new Error(`cannot colour by ${name}`);
    await host.setColour(c);
    ui.colour = c;
    renderLegend(c);
    const w = model("nenya-colour");
    if (w && w.value !== name) synced(() => { w.value = name; });
    return name;
  }
  async function neighbours(id) {
    const nb = await host.neighbours(String(id));
    if (!nb) return null;
    renderNeighbours(nb);
    return nb.hits.map((h) => h.id);
  }
  async function find(id) {
    id = String(id);
    if (!id) return false;
    if (!(await host.find(id))) {
      ui.noteExtra = `no id ${esc(id)} ${esc(DATA.among)}`;
      renderNote();
      return false;
    }
    ui.noteExtra = "";
    renderNote();
    await neighbours(id);
    return true;
  }
  async function selected(count) { await refreshSelection(); return count; }
  async function clearSelection() { await host.clearSelection(); await refreshSelection(); return 0; }
  async function query(blob, name) { const q = await host.query(blob, name); renderQuery(q); return q; }

  // the hover card next to the pointer: built with DOM calls, ids set as text, images only the host's
  let card = null;
  function hoverCard() {
    if (card) return card;
    card = document.createElement("div");
    card.id = "nenya-hover";
    card.style.cssText = "position:fixed;pointer-events:none;z-index:1000;display:none;background:#fff;" +
      "border:1px solid #888;border-radius:3px;padding:4px;font:12px sans-serif;box-shadow:0 1px 4px #0003;max-width:220px";
    const pic = document.createElement("img");
    pic.style.cssText = "width:96px;height:96px;image-rendering:pixelated;display:block";
    card.append(pic, document.createElement("div"));
    document.body.appendChild(card);
    return card;
  }
  function hover(view, i, geometry) {
    const p = host.pointAt(view, i);
    if (!p) return;
    const src = p.image >= 0 ? host.thumb(p.image) : null;
    const c = ui.colour, value = c ? ` <span class="nenya-note">${esc(c.name)}: ${esc(display(c, p.value))}</span>` : "";
    const other = p.image >= 0 && p.image !== p.row;
    setText("nenya-preview", `<div>${esc(p.id)}${value}</div>` + (src ? img(p.image, p.imageId, "p") +
      (other ? `<div class="nenya-note">nearest image: ${esc(p.imageId)}</div>` : "") : ""));
    const el = hoverCard(), pic = el.firstChild, cap = el.lastChild;
    const v = window.Bokeh.index.find_one(model(view));
    if (!v || !geometry) return;
    const r = v.el.getBoundingClientRect();
    pic.style.display = src ? "block" : "none";
    if (src) pic.src = src;
    cap.textContent = String(p.id) + (other ? " (nearest image)" : "");
    el.style.left = `${Math.min(r.left + geometry.sx + 14, window.innerWidth - 230)}px`;
    el.style.top = `${Math.max(r.top + geometry.sy - 120, 0)}px`;
    el.style.display = "block";
  }

  // -- the UI's entry points ------------------------------------------------------------------------
  function report(e) { ui.noteExtra = `<b>${esc(e.message || e)}</b>`; renderNote(); }
  api._ui = function (action, w) {
    if (ui.syncing || !api.ready) return;
    let done;
    if (action === "filter") {
      const c = COLS.find((c) => "filter:" + c.field === w.name);
      done = setFilter(c.name, widgetSpec(c, w), false);
    } else if (action === "colour") done = setColour(w.value);
    else if (action === "find") done = find(w.value.trim());
    else if (action === "dt") {
      const b = DATA.dt_bins[w.value];
      done = setFilter(DATA.dt_column, w.value === "all" ? null : [b[0], b[1]], w.value !== "all");
    } else if (action === "clearFilters") done = clearFilters();
    else if (action === "clearSelection") done = clearSelection();
    else if (action === "export") done = host.download();
    else if (action === "trends") done = writeTrends();
    if (done) Promise.resolve(done).catch(report);
  };
  api._hover = function (cb_data, view) {
    const idx = cb_data.index && cb_data.index.indices;
    if (idx && idx.length) hover(view, idx[0], cb_data.geometry);
    else if (card) card.style.display = "none";
  };
  api._geometry = function (ev, view) {
    if (!ev.final || !api.ready) return;
    Promise.resolve(host.geometry(view, ev.geometry)).then((n) => (n === null ? null : refreshSelection())).catch(report);
  };
  api._tap = function (ev, view) {
    if (!api.ready) return;
    Promise.resolve(host.nearest(view, ev.x, ev.y)).then((id) => (id === null ? null : neighbours(id))).catch(report);
  };
  // a selection made in the page by Bokeh's own tools (the API's own redraw once: host.quiet)
  api._onSelect = function () { if (api.ready && !host.quiet) refreshSelection().catch(report); };
  api._note = function (lines) { renderNote(lines); };

  // -- the scripting API: the same names and arguments in both hosts, each returns a Promise --------
  const call = (fn) => (...a) => Promise.resolve().then(() => fn(...a));
  Object.assign(api, {
    views: call(() => DATA.views.slice()),
    columns: call(() => COLS.map((c) => ({ name: c.name, kind: c.kind, filter: c.filter }))),
    backend: call(() => host.backend()),
    select: call(async (view, polygon) => selected(await host.select(view, polygon))),
    selectBox: call(async (view, x0, x1, y0, y1) => selected(await host.selectBox(view, x0, x1, y0, y1))),
    selectedIds: call(() => host.selectedIds()),
    shownIds: call(() => host.shownIds()),
    setFilter: call((name, spec) => setFilter(name, spec, false)),
    clearFilters: call(clearFilters),
    clearSelection: call(clearSelection),
    exportCsv: call(() => host.exportCsv()),
    exportUrl: call(() => host.exportUrl()),
    setColour: call(setColour),
    find: call(find),
    neighbours: call(neighbours),
    query: call(query),
    queryId: call(neighbours), // a stored point as the query: its neighbours, listed and ringed
    setView: call((view, x0, x1, y0, y1) => host.setView(view, x0, x1, y0, y1)),
    state: call(() => host.state()),
    stats: call(stats),
    trendsCommand: call(trendsCommand),
  });
  // for tests: the text a panel shows (parsed inertly: nothing in it loads or runs)
  api._text = (name) => new DOMParser().parseFromString(model(name).text, "text/html").body.textContent.trim();
  api._thumbRows = () => host.thumbRows();

  function start() {
    const Bokeh = window.Bokeh;
    const d = host.document ? host.document() : Bokeh && Bokeh.documents && Bokeh.documents[0]; // the page's, or the host's own
    if (!d || !d.get_model_by_name("nenya-table-source")) {
      setTimeout(start, 20);
      return;
    }
    doc = d;
    host.start(doc);
    setText("nenya-title", `<h2 style="margin:4px 0">${esc(DATA.title)}</h2>`);
    renderNote(host.noteLines());
    const first = (DATA.colour ? setColour(DATA.colour) : Promise.resolve()).then(refreshStats);
    first.catch(report).finally(() => {
      api.ready = true;
      document.body.dataset.nenyaReady = "1";
    });
  }
  start();
})();
