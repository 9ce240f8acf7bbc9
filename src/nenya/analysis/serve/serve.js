// nenya serve: the page's scripting API (window.nenya) over the server. The same names as the
// explorer page's API; here every call returns a Promise, because the answer is computed on the
// server over the whole collection. Requests go one at a time through a data source nothing
// draws (nenya-rpc-in); replies come back through another (nenya-rpc-out), large ones as downloads.
// Nothing from the data becomes markup here: messages are set as text.
(function () {
  "use strict";
  // the token leaves the address bar (and the history) once the server has set its cookie, as Jupyter's does
  if (/[?&]token=/.test(location.search)) history.replaceState(null, "", location.pathname);
  const DATA = JSON.parse(document.getElementById("nenya-data").textContent);
  const api = { ready: false };
  window.nenya = api;
  let doc = null, seq = 0, chain = Promise.resolve();
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
  api._reply = async function (text) {
    if (!text) return;
    const m = JSON.parse(text);
    if (m.download) { saveAs(m.download); return; }
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (!m.ok) { p.reject(new Error(m.error)); return; }
    try {
      if (m.url) { const t = await fetchText(m.url); p.resolve(m.json ? JSON.parse(t) : t); }
      else p.resolve(m.result);
    } catch (e) { p.reject(e); }
  };

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

  api.views = () => DATA.views.slice();
  api.columns = () => DATA.columns.map((c) => ({ ...c }));
  api.backend = () => "server";
  api.select = (view, polygon) => rpc("select", { view, polygon });
  api.selectBox = (view, x0, x1, y0, y1) => rpc("selectBox", { view, x0, x1, y0, y1 });
  api.selectedIds = () => rpc("selectedIds");
  api.setFilter = (name, spec) => rpc("setFilter", { name, spec: spec === undefined ? null : spec });
  api.clearFilters = () => rpc("clearFilters");
  api.clearSelection = () => rpc("clearSelection");
  api.shownIds = () => rpc("shownIds");
  api.exportCsv = async () => fetchText((await rpc("exportCsv")).url);
  api.exportUrl = async () => (await rpc("exportCsv")).url;
  api.setColour = (name) => rpc("setColour", { name });
  api.find = (id) => rpc("find", { id: String(id) });
  api.neighbours = (id) => rpc("neighbours", { id: String(id) });
  api.queryId = (id) => rpc("queryId", { id: String(id) });
  api.query = (blob, name) => query(blob, name);
  api.state = () => rpc("state");
  api.setView = (view, x0, x1, y0, y1) => rpc("setView", { view, x0, x1, y0, y1 });
  api._text = (name) => new DOMParser().parseFromString(model(name).text, "text/html").body.textContent.trim();

  function wireUpload() {
    const input = document.getElementById("nenya-upload"), msg = document.getElementById("nenya-upload-msg");
    if (!input) return;
    input.addEventListener("change", async () => {
      const f = input.files && input.files[0];
      if (!f) return;
      msg.textContent = `encoding ${f.name}...`;
      try {
        const res = await query(f, f.name);
        msg.textContent = `${f.name}: nearest ${res.neighbours.length ? res.neighbours[0].id : "(none)"}; placed by ${res.placement.method}`;
      } catch (e) { msg.textContent = String(e.message || e); }
      input.value = "";
    });
  }

  function start() {
    const Bokeh = window.Bokeh;
    if (!Bokeh || !Bokeh.documents || !Bokeh.documents.length || !Bokeh.documents[0].get_model_by_name("nenya-rpc-in")) {
      setTimeout(start, 20);
      return;
    }
    doc = Bokeh.documents[0];
    wireUpload();
    api.ready = true;
    document.body.dataset.nenyaReady = "1";
  }
  start();
})();
