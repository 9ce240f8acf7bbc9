"""The explorer page: one HTML file with inline CSS and JS (no network, no CDN); data goes in ``__DATA__``."""

from __future__ import annotations

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
  body { font: 13px/1.35 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
  header { padding: 6px 12px; background: #24324a; color: #fff; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 15px; margin: 0; font-weight: 600; }
  header .note { opacity: 0.8; }
  header select { font: inherit; }
  main { display: flex; gap: 8px; padding: 8px; }
  #plot { position: relative; flex: 1 1 auto; min-width: 300px; }
  #canvas { width: 100%; height: calc(100vh - 70px); min-height: 360px; display: block; background: #fff;
            border: 1px solid #ccc; cursor: crosshair; }
  #tooltip { position: absolute; pointer-events: none; background: rgba(255,255,255,0.95); border: 1px solid #999;
             padding: 4px; display: none; max-width: 220px; word-break: break-all; font-size: 12px; }
  #side { flex: 0 0 300px; display: flex; flex-direction: column; gap: 8px; max-height: calc(100vh - 70px); overflow: auto; }
  .panel { background: #fff; border: 1px solid #ccc; padding: 6px; }
  .panel h2 { font-size: 13px; margin: 0 0 4px 0; }
  #hover-img, .thumb { image-rendering: pixelated; background: #eee; }
  #hover-img { width: 160px; height: 160px; object-fit: contain; display: block; }
  #hover-id, #sel-id { word-break: break-all; }
  #neighbours { list-style: none; margin: 0; padding: 0; }
  #neighbours li { display: flex; gap: 6px; align-items: center; padding: 2px 0; border-bottom: 1px solid #eee; cursor: pointer; }
  #neighbours li:hover { background: #eef3ff; }
  #neighbours .thumb { width: 48px; height: 48px; flex: 0 0 48px; }
  #neighbours .noimg { width: 48px; height: 48px; flex: 0 0 48px; background: #eee; }
  #neighbours .txt { word-break: break-all; font-size: 12px; }
  #legend { font-size: 12px; }
  #legend .sw { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: middle; }
  #legend .bar { height: 10px; width: 100%; }
  .muted { color: #777; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <label>colour by <select id="color-by"></select></label>
  <span class="note" id="note"></span>
  <span class="note">wheel: zoom, drag: pan, double-click: reset, click: neighbours</span>
</header>
<main>
  <div id="plot"><canvas id="canvas"></canvas><div id="tooltip"></div></div>
  <div id="side">
    <div class="panel"><h2>Under the pointer</h2>
      <img id="hover-img" alt="">
      <div id="hover-id" class="muted">move the pointer over the points</div>
      <div id="hover-val" class="muted"></div>
    </div>
    <div class="panel"><h2>Legend</h2><div id="legend"></div></div>
    <div class="panel"><h2>Nearest neighbours <span id="metric" class="muted"></span></h2>
      <div id="sel-id" class="muted">click a point</div>
      <ol id="neighbours"></ol>
    </div>
  </div>
</main>
<script id="nenya-data" type="application/json">__DATA__</script>
<script>
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("nenya-data").textContent);
  function b64(s, T) {
    const bin = atob(s), buf = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) buf[i] = bin.charCodeAt(i);
    return new T(buf.buffer);
  }
  const N = D.n, X = b64(D.x, Float32Array), Y = b64(D.y, Float32Array);
  const K = D.k, NBR = D.k ? b64(D.nbr, Int32Array) : new Int32Array(0), NSC = D.k ? b64(D.nbr_score, Float32Array) : new Float32Array(0);
  const THUMBS = D.thumbs, TROWS = b64(D.thumb_rows, Int32Array);
  const thumbOf = new Int32Array(N).fill(-1);
  for (let j = 0; j < TROWS.length; j++) thumbOf[TROWS[j]] = j;
  const cols = D.columns.map(c => c.kind === "num" ? Object.assign({}, c, {v: b64(c.data, Float32Array)})
                                                    : Object.assign({}, c, {v: b64(c.codes, Uint16Array)}));
  const $ = id => document.getElementById(id);
  $("title").textContent = D.title;
  $("note").textContent = D.note;
  $("metric").textContent = D.k ? "(" + D.metric + ", latent space)" : "";
  document.title = D.title;

  // ---- colours ----------------------------------------------------------------------------
  const VIRIDIS = D.viridis; // 256 x [r,g,b]
  const PALETTE = D.palette; // categorical [r,g,b]
  const colour = new Uint32Array(N);
  const pack = (r, g, b) => (255 << 24 | b << 16 | g << 8 | r) >>> 0; // little-endian RGBA in a Uint32
  let current = null;
  function setColour(name) {
    current = cols.find(c => c.name === name) || null;
    const leg = $("legend"); leg.textContent = "";
    if (!current) { colour.fill(pack(59, 110, 168)); leg.textContent = "one colour"; return; }
    if (current.kind === "num") {
      const lo = current.min, hi = current.max, span = hi > lo ? hi - lo : 1;
      for (let i = 0; i < N; i++) {
        const v = current.v[i];
        if (!Number.isFinite(v)) { colour[i] = pack(190, 190, 190); continue; }
        const c = VIRIDIS[Math.max(0, Math.min(255, Math.round((v - lo) / span * 255)))];
        colour[i] = pack(c[0], c[1], c[2]);
      }
      const bar = document.createElement("canvas"); bar.width = 256; bar.height = 1; bar.className = "bar";
      const bctx = bar.getContext("2d"); const im = bctx.createImageData(256, 1);
      for (let j = 0; j < 256; j++) { im.data.set([VIRIDIS[j][0], VIRIDIS[j][1], VIRIDIS[j][2], 255], 4 * j); }
      bctx.putImageData(im, 0, 0); leg.appendChild(bar);
      const t = document.createElement("div"); t.textContent = fmt(lo) + " \u2014 " + name + " \u2014 " + fmt(hi); leg.appendChild(t);
    } else {
      for (let i = 0; i < N; i++) { const c = PALETTE[current.v[i] % PALETTE.length]; colour[i] = pack(c[0], c[1], c[2]); }
      current.levels.forEach((lev, j) => {
        const row = document.createElement("div"), sw = document.createElement("span");
        const c = PALETTE[j % PALETTE.length]; sw.className = "sw"; sw.style.background = "rgb(" + c.join(",") + ")";
        row.appendChild(sw); row.appendChild(document.createTextNode(lev)); leg.appendChild(row);
      });
    }
  }
  function fmt(v) { return (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0)) ? v.toExponential(2) : (+v.toFixed(3)).toString(); }
  function valueText(i) {
    if (!current) return "";
    if (current.kind === "num") return current.name + " = " + fmt(current.v[i]);
    return current.name + " = " + current.levels[current.v[i]];
  }

  // ---- view --------------------------------------------------------------------------------
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  let W = 0, H = 0, dpr = 1;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < N; i++) { if (X[i] < x0) x0 = X[i]; if (X[i] > x1) x1 = X[i]; if (Y[i] < y0) y0 = Y[i]; if (Y[i] > y1) y1 = Y[i]; }
  if (!(x1 > x0)) { x0 -= 1; x1 += 1; } if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
  let view = {cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale: 1};
  function baseScale() { return Math.min((W - 20 * dpr) / (x1 - x0), (H - 20 * dpr) / (y1 - y0)); }
  function toScreen(i) { const s = baseScale() * view.scale; return [W / 2 + (X[i] - view.cx) * s, H / 2 - (Y[i] - view.cy) * s]; }
  function toData(px, py) { const s = baseScale() * view.scale; return [view.cx + (px - W / 2) / s, view.cy - (py - H / 2) / s]; }
  function resize() {
    dpr = window.devicePixelRatio || 1;
    const r = canvas.getBoundingClientRect();
    W = Math.max(1, Math.round(r.width * dpr)); H = Math.max(1, Math.round(r.height * dpr));
    canvas.width = W; canvas.height = H; draw();
  }

  let selected = -1, hovered = -1, pending = false;
  const stats = {drawMs: 0, draws: 0, hoverMs: 0};
  function draw() {
    const t0 = performance.now();
    const img = ctx.createImageData(W, H), buf = new Uint32Array(img.data.buffer);
    buf.fill(0xffffffff);
    const s = baseScale() * view.scale, r = Math.max(1, Math.round(dpr * (N > 20000 ? 1 : 2)));
    const ox = W / 2 - view.cx * s, oy = H / 2 + view.cy * s;
    for (let i = 0; i < N; i++) {
      const px = Math.round(ox + X[i] * s), py = Math.round(oy - Y[i] * s);
      if (px < 0 || py < 0 || px + r > W || py + r > H) continue;
      const c = colour[i];
      for (let dy = 0; dy < r; dy++) { const row = (py + dy) * W + px; for (let dx = 0; dx < r; dx++) buf[row + dx] = c; }
    }
    ctx.putImageData(img, 0, 0);
    if (selected >= 0) {
      ctx.lineWidth = 2 * dpr;
      for (let j = 0; j < K; j++) { const q = NBR[selected * K + j]; if (q < 0) continue; ring(q, 5 * dpr, "#ff7f00"); }
      ring(selected, 8 * dpr, "#d00");
    }
    if (hovered >= 0) { ctx.lineWidth = 1.5 * dpr; ring(hovered, 6 * dpr, "#000"); }
    stats.drawMs = performance.now() - t0; stats.draws++;
  }
  function ring(i, rad, col) { const p = toScreen(i); ctx.strokeStyle = col; ctx.beginPath(); ctx.arc(p[0], p[1], rad, 0, 2 * Math.PI); ctx.stroke(); }
  function redraw() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); } }

  // ---- nearest point under the pointer: a bucket grid in data space -------------------------
  function makeGrid(rows) {
    const G = Math.max(1, Math.min(512, Math.ceil(Math.sqrt(rows.length / 4))));
    const cell = new Int32Array(rows.length), count = new Int32Array(G * G + 1);
    for (let j = 0; j < rows.length; j++) {
      const i = rows[j];
      const gx = Math.min(G - 1, Math.floor((X[i] - x0) / (x1 - x0) * G)), gy = Math.min(G - 1, Math.floor((Y[i] - y0) / (y1 - y0) * G));
      cell[j] = gy * G + gx; count[cell[j] + 1]++;
    }
    for (let c = 0; c < G * G; c++) count[c + 1] += count[c];
    const start = count.slice(), items = new Int32Array(rows.length);
    for (let j = 0; j < rows.length; j++) items[start[cell[j]]++] = rows[j];
    return {G, count, items};
  }
  function nearest(grid, dx, dy) {
    const {G, count, items} = grid; if (!items.length) return -1;
    const gx = Math.floor((dx - x0) / (x1 - x0) * G), gy = Math.floor((dy - y0) / (y1 - y0) * G);
    const cw = (x1 - x0) / G, ch = (y1 - y0) / G;
    let best = -1, bd = Infinity;
    for (let ring = 0; ring <= 2 * G; ring++) {
      for (let yy = gy - ring; yy <= gy + ring; yy++) {
        if (yy < 0 || yy >= G) continue;
        for (let xx = gx - ring; xx <= gx + ring; xx++) {
          if (xx < 0 || xx >= G) continue;
          if (Math.abs(xx - gx) !== ring && Math.abs(yy - gy) !== ring) continue;
          const c = yy * G + xx;
          for (let q = count[c]; q < count[c + 1]; q++) {
            const i = items[q], ddx = X[i] - dx, ddy = Y[i] - dy, d = ddx * ddx + ddy * ddy;
            if (d < bd) { bd = d; best = i; }
          }
        }
      }
      // every point not yet visited is at least (ring) cells away
      const reach = ring * Math.min(cw, ch);
      if (best >= 0 && reach * reach >= bd) break;
    }
    return best;
  }
  const allRows = new Int32Array(N); for (let i = 0; i < N; i++) allRows[i] = i;
  const gridAll = makeGrid(allRows), gridThumb = makeGrid(TROWS);

  function pointerPos(ev) { const r = canvas.getBoundingClientRect(); return [(ev.clientX - r.left) * dpr, (ev.clientY - r.top) * dpr]; }
  function pick(px, py, maxPx) {
    const d = toData(px, py), i = nearest(gridAll, d[0], d[1]);
    if (i < 0) return -1; const p = toScreen(i);
    return Math.hypot(p[0] - px, p[1] - py) <= maxPx * dpr ? i : -1;
  }
  const tip = $("tooltip");
  function hoverAt(px, py, clientX, clientY) {
    const t0 = performance.now();
    const i = pick(px, py, 25);
    const d = toData(px, py), j = nearest(gridThumb, d[0], d[1]);
    if (j >= 0) { const hi = $("hover-img"); hi.src = THUMBS[thumbOf[j]]; hi.alt = D.ids[j]; hi.dataset.row = j; }
    if (i >= 0) {
      $("hover-id").textContent = D.ids[i] + (j >= 0 && j !== i ? "  (image: nearest with a thumbnail, " + D.ids[j] + ")" : "");
      $("hover-val").textContent = valueText(i);
      tip.style.display = "block"; tip.textContent = D.ids[i] + (current ? "\n" + valueText(i) : "");
      const r = canvas.getBoundingClientRect(), pr = $("plot").getBoundingClientRect();
      tip.style.left = (clientX - pr.left + 12) + "px"; tip.style.top = (clientY - pr.top + 12) + "px";
    } else { tip.style.display = "none"; }
    if (i !== hovered) { hovered = i; redraw(); }
    stats.hoverMs = performance.now() - t0;
  }
  function select(i) {
    selected = i; const ol = $("neighbours"); ol.textContent = "";
    if (i < 0) { $("sel-id").textContent = "click a point"; redraw(); return; }
    $("sel-id").textContent = "selected: " + D.ids[i] + (current ? " (" + valueText(i) + ")" : "");
    for (let j = 0; j < K; j++) {
      const q = NBR[i * K + j]; if (q < 0) continue;
      const li = document.createElement("li");
      if (thumbOf[q] >= 0) { const im = document.createElement("img"); im.className = "thumb"; im.src = THUMBS[thumbOf[q]]; im.alt = ""; li.appendChild(im); }
      else { const e = document.createElement("span"); e.className = "noimg"; li.appendChild(e); }
      const t = document.createElement("span"); t.className = "txt";
      t.textContent = (j + 1) + ". " + D.ids[q] + "  " + D.metric + " " + fmt(NSC[i * K + j]); li.appendChild(t);
      li.dataset.row = q; li.addEventListener("click", () => select(q));
      ol.appendChild(li);
    }
    if (!K) { const li = document.createElement("li"); li.textContent = "no neighbours were computed for this page"; ol.appendChild(li); }
    redraw();
  }

  let drag = null;
  canvas.addEventListener("mousemove", ev => {
    const [px, py] = pointerPos(ev);
    if (drag) { const s = baseScale() * view.scale; view.cx = drag.cx - (px - drag.px) / s; view.cy = drag.cy + (py - drag.py) / s; drag.moved = true; redraw(); return; }
    hoverAt(px, py, ev.clientX, ev.clientY);
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; hovered = -1; redraw(); });
  canvas.addEventListener("mousedown", ev => { const [px, py] = pointerPos(ev); drag = {px, py, cx: view.cx, cy: view.cy, moved: false}; });
  window.addEventListener("mouseup", ev => {
    if (drag && !drag.moved && ev.target === canvas) { const [px, py] = pointerPos(ev); const i = pick(px, py, 25); if (i >= 0) select(i); }
    drag = null;
  });
  canvas.addEventListener("wheel", ev => {
    ev.preventDefault(); const [px, py] = pointerPos(ev), before = toData(px, py);
    view.scale = Math.max(0.2, Math.min(1e4, view.scale * Math.exp(-ev.deltaY * 0.0015)));
    const after = toData(px, py); view.cx += before[0] - after[0]; view.cy += before[1] - after[1]; redraw();
  }, {passive: false});
  canvas.addEventListener("dblclick", () => { view = {cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale: 1}; redraw(); });

  const sel = $("color-by");
  const none = document.createElement("option"); none.value = ""; none.textContent = "(none)"; sel.appendChild(none);
  cols.forEach(c => { const o = document.createElement("option"); o.value = c.name; o.textContent = c.name; sel.appendChild(o); });
  sel.value = D.color || "";
  sel.addEventListener("change", () => { setColour(sel.value); if (selected >= 0) select(selected); redraw(); });
  setColour(sel.value);
  window.addEventListener("resize", resize);
  resize();

  // for scripted checks (tests, benchmarks): screen position of a point in CSS pixels, timings
  window.nenyaExplorer = {
    n: N, stats, select, thumbRows: TROWS,
    screenPos: i => { const p = toScreen(i); return [p[0] / dpr, p[1] / dpr]; },
    ready: true,
  };
})();
</script>
</body>
</html>
"""
