// nenya serve: the server as the explorer's host (window.nenyaHost). The collection and every
// computation over it live on the server; each host function is one request through a data source
// nothing draws (nenya-rpc-in), answered through another (nenya-rpc-out), large replies as downloads.
// The side panel and window.nenya are nenya.js, shared with the offline page.
(function () {
  "use strict";
  // the token leaves the address bar (and the history) once the server has set its cookie, as Jupyter's does
  if (/[?&]token=/.test(location.search)) history.replaceState(null, "", location.pathname);
  const DATA = JSON.parse(document.getElementById("nenya-data").textContent);
  let doc = null, seq = 0, chain = Promise.resolve(), lines = DATA.note;
  const pending = new Map();
  const model = (name) => doc.get_model_by_name(name);

  function send(op, args) {
    return new Promise((resolve, reject) => {
      const id = ++seq;
      pending.set(id, { resolve, reject });
      model("nenya-rpc-in").data = { msg: [JSON.stringify({ id, op, args: args || {} })] };
    });
  }
  // one request at a time: each waits for the reply to the one before
  function rpc(op, args) {
    const p = chain.then(() => send(op, args));
    chain = p.catch(() => undefined);
    return p;
  }
  async function fetchText(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    if (!r.ok) throw new Error(`${url}: ${r.status}`);
    return r.text();
  }
  function saveAs(url) {
    const a = document.createElement("a");
    a.href = url;
    a.download = "nenya-selection.csv";
    document.body.appendChild(a);
    a.click();
    setTimeout(() => a.remove(), 1000);
  }
  async function reply(text) {
    if (!text) return;
    const m = JSON.parse(text);
    if (m.note) { lines = m.note; if (window.nenya && window.nenya.ready) window.nenya._note(lines); }
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (!m.ok) { p.reject(new Error(m.error)); return; }
    try {
      if (m.url) { const t = await fetchText(m.url); p.resolve(m.json ? JSON.parse(t) : t); }
      else p.resolve(m.result);
    } catch (e) { p.reject(e); }
  }

  async function query(blob, name) {
    name = name || blob.name || "query.npy";
    if (blob.size > DATA.max_upload) {
      throw new Error(`${name} is ${blob.size.toLocaleString()} bytes; this server takes at most ${DATA.max_upload.toLocaleString()}`);
    }
    const r = await fetch("nenya/query?name=" + encodeURIComponent(name), { method: "POST", body: blob, credentials: "same-origin" });
    let body;
    try { body = await r.json(); } catch (e) { body = { error: `the server answered ${r.status}` }; }
    if (!r.ok) throw new Error(body.error || `the server answered ${r.status}`);
    return rpc("showQuery", { token: body.token });
  }

  function wireUpload() {
    const input = document.getElementById("nenya-upload"), msg = document.getElementById("nenya-upload-msg");
    if (!input) return;
    input.addEventListener("change", async () => {
      const f = input.files && input.files[0];
      if (!f) return;
      msg.textContent = `encoding ${f.name}...`;
      try {
        const res = await window.nenya.query(f, f.name);
        msg.textContent = `${f.name}: nearest ${res.neighbours.length ? res.neighbours[0].id : "(none)"}; placed by ${res.placement.method}`;
      } catch (e) { msg.textContent = String(e.message || e); }
      input.value = "";
    });
  }

  window.nenyaHost = {
    data: DATA,
    start(d) {
      doc = d;
      wireUpload();
    },
    _reply: reply,
    backend: () => "server",
    number: (v) => (typeof v === "string" ? Date.parse(v) : Number(v)),
    thumb: (row) => (DATA.thumbs && row >= 0 ? `nenya/thumb/${row}.png` : null),
    thumbRows: () => [],
    noteLines: () => lines,
    select: (view, polygon) => rpc("select", { view, polygon }),
    selectBox: (view, x0, x1, y0, y1) => rpc("selectBox", { view, x0, x1, y0, y1 }),
    geometry(view, g) {
      if (g.type === "rect") return rpc("selectBox", { view, x0: g.x0, x1: g.x1, y0: g.y0, y1: g.y1 });
      if (g.type === "poly") return rpc("select", { view, polygon: Array.from(g.x, (x, i) => [x, g.y[i]]) });
      return null;
    },
    selection: () => rpc("selection"),
    selectedIds: () => rpc("selectedIds"),
    shownIds: () => rpc("shownIds"),
    setFilter: (name, spec, leftOpen) => rpc("setFilter", { name, spec, left_open: leftOpen }),
    clearFilters: () => rpc("clearFilters"),
    clearSelection: () => rpc("clearSelection"),
    exportCsv: async () => fetchText((await rpc("exportCsv")).url),
    exportUrl: async () => (await rpc("exportCsv")).url,
    download: async () => saveAs((await rpc("exportCsv")).url),
    setColour: (c) => rpc("setColour", { name: c.name }),
    setView: (view, x0, x1, y0, y1) => rpc("setView", { view, x0, x1, y0, y1 }),
    find: (id) => rpc("find", { id }),
    neighbours: (id) => rpc("neighbours", { id }),
    nearest: (view, x, y) => rpc("nearest", { view, x, y }),
    pointAt(view, i) {
      const d = model("nenya-points:" + view).data;
      const row = d.row[i];
      return row === undefined ? null : { row, id: d.id[i], image: DATA.thumbs ? row : -1, imageId: d.id[i], value: d.c[i] };
    },
    query,
    state: () => rpc("state"),
    stats: () => rpc("stats"),
    filters: () => rpc("filters"),
  };
})();
