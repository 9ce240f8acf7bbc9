"""``nenya serve``: the server's computations against numpy/pandas references, its HTTP routes against
hostile requests, and the whole app over 200,000 points in headless Chromium through ``window.nenya``."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nenya.analysis import build_index
from nenya.analysis.serve import Collection, is_loopback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pagekit import CHROMIUM, bin_counts, draw_lasso, inside  # noqa: E402
from pagekit import screen as _screen  # noqa: E402
from servekit import make_collection, start_server, stop_server  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
HOSTILE = "<img src=x onerror=window.__pwned=1>"


def _small(n: int = 3000, seed: int = 0) -> tuple[Collection, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=(n, 8)).astype(np.float32)
    table = pd.DataFrame(
        {
            "id": [f"i{k}" for k in range(n)],
            "label": rng.choice(["a", "b", "=cmd()", None], n),
            "DT40": np.where(rng.random(n) < 0.05, np.nan, rng.gamma(2, 1, n)),
            "datetime": pd.Timestamp("2012-01-01") + pd.to_timedelta(rng.integers(0, 3650, n), unit="D"),
            "lat": rng.uniform(-60, 60, n),
            "lon": rng.uniform(-180, 180, n),
        }
    )
    xy = rng.normal(size=(n, 2)) * 3
    c = Collection(xy[:, 0], xy[:, 1], table, build_index(vec, kind="flat", ids=table["id"].to_numpy()))
    return c, table, vec


# -- the server's computations -------------------------------------------------------------------
def test_filters_selections_and_exports_equal_pandas(tmp_path):
    c, t, _ = _small()
    f = {
        "label": c.normalise_filter("label", ["a", "(missing)"]),
        "DT40": c.normalise_filter("DT40", [1.0, None]),
        "datetime": c.normalise_filter("datetime", ["2014-01-01", "2018-06-30T00:00:00Z"]),
    }
    keep = c.mask(f)
    t0 = pd.Timestamp("2014-01-01")
    ref = (
        (t["label"].isin(["a"]) | t["label"].isna())
        & (t["DT40"] >= 1.0)
        & (t["datetime"] >= t0)
        & (t["datetime"] <= pd.Timestamp("2018-06-30"))
    )
    assert keep.sum() > 100 and (keep == ref.to_numpy()).all()
    poly = [[-2.0, -3.0], [4.0, -1.0], [3.0, 4.0], [-1.0, 2.5], [0.5, 0.5]]
    rows = c.in_polygon("projection", [p[0] for p in poly], [p[1] for p in poly], keep)
    assert (rows == np.flatnonzero(inside(c.x, c.y, poly) & keep)).all() and len(rows) > 10
    box = c.in_rect("map", 40, -30, -20, 50, np.ones(c.n, bool))
    assert (box == np.flatnonzero(t["lon"].between(-30, 40) & t["lat"].between(-20, 50))).all()
    out = tmp_path / "x.csv"
    assert c.write_csv(rows, str(out)) == len(rows)
    got = pd.read_csv(out, keep_default_na=False)
    assert got["id"].tolist() == t["id"].iloc[rows].tolist()
    assert np.allclose(got["DT40"].astype(float), t["DT40"].iloc[rows])
    assert not got["label"].str.startswith("=").any()  # a spreadsheet must not run a cell
    bad = c.normalise_filter
    with pytest.raises(ValueError, match="no filter for column id"):
        bad("id", ["i1"])
    with pytest.raises(ValueError, match=r"give \[min, max\]"):
        bad("DT40", [1])
    with pytest.raises(ValueError, match="not a number or a date"):
        bad("DT40", ["soon", 2])


def test_viewport_sample_is_stable_and_density_counts_every_point():
    c, _, _ = _small(20_000)
    keep = np.ones(c.n, bool)
    rows = c.in_rect("projection", -3, 3, -3, 3, keep)
    a = c.sample(rows, 1000)
    assert len(a) == 1000 and set(a) <= set(rows)
    inner = c.in_rect("projection", -2, 2, -2, 2, keep)
    b = c.sample(inner, 1000)
    # zooming in keeps every point that was drawn and is still in view (no reshuffling)
    assert set(a) & set(inner) <= set(b)
    d = c.density("projection", -3, 3, -3, 3, keep, (64, 48))
    assert d.shape == (48, 64) and d.sum() == len(rows)
    assert c.sample(rows[:10], 1000).tolist() == rows[:10].tolist()


def test_neighbours_and_placement():
    c, _, vec = _small()
    rows, scores = c.neighbours_of_row(7, 5)
    d = ((vec - vec[7]) ** 2).sum(1)
    d[7] = np.inf
    assert rows.tolist() == np.argsort(d)[:5].tolist() and np.allclose(scores, np.sort(d)[:5], rtol=1e-4)
    p = c.place(vec[7], rows)
    assert p.method == "neighbours-mean" and np.isclose(p.x, c.x[rows].mean()) and np.isclose(p.y, c.y[rows].mean())
    from sklearn.decomposition import PCA

    c.reducer = PCA(2).fit(vec)  # anything with a fitted transform, as a UMAP has
    p = c.place(vec[7], rows)
    assert p.method == "umap-transform" and np.allclose([p.x, p.y], c.reducer.transform(vec[7:8])[0])


def test_query_encoder_reads_uploads_safely(tmp_path):
    from nenya._errors import InputError
    from nenya.analysis.query import QueryEncoder

    class Unloaded(QueryEncoder):
        def __init__(self) -> None:  # the readers need no model
            self.spec = "none"

    q = Unloaded()
    good = io.BytesIO()
    np.save(good, np.ones((8, 8), np.float32))
    assert q._cutout(good.getvalue(), "a.npy").shape == (1, 8, 8)
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a plain .npy"):
        q._cutout(pickled.getvalue(), "p.npy")
    nan = io.BytesIO()
    np.save(nan, np.full((4, 4), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN"):
        q._cutout(nan.getvalue(), "n.npy")
    with pytest.raises(InputError, match="not a readable .npy"):
        q._cutout(b"\x93NUMPY garbage", "g.npy")
    with pytest.raises(InputError, match=r"a query is a \.npy cutout or an image file"):
        q.encode_bytes(b"MZ...", "tool.exe")


def test_loopback_rules():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


# -- the running server -------------------------------------------------------------------------------
N = 200_000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("serve"), N, hostile=HOSTILE)


@pytest.fixture(scope="module")
def server(data):
    s = start_server(
        [data.latents, "--coords", data.coords, "--images", data.preproc, "--max-upload-mb", "1", "-k", "5"],
        Path(data.latents).parent,
    )
    yield s
    rc, _, log = stop_server(s)
    assert rc == 0, log
    assert "stopped" in log


def _raw_get(url: str, path: str, token: str) -> tuple[int, bytes]:
    """A request line sent exactly as written (no client normalises the ../ away)."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("GET", path, skip_host=False)
    conn.putheader("Authorization", f"token {token}")
    conn.endheaders()
    r = conn.getresponse()
    return r.status, r.read()


TRAVERSALS = [
    "/nenya/thumb/../../../../etc/passwd",
    "/nenya/thumb/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/nenya/thumb/%2Fetc%2Fpasswd",
    "/nenya/thumb//etc/passwd",
    "/nenya/thumb/%252e%252e%252fetc%252fpasswd",
    "/nenya/thumb/1.png%00../../etc/passwd",
    "/nenya/download/..%2F..%2F..%2Fetc%2Fpasswd",
    "/nenya/download/../../../etc/passwd",
    "/nenya/download//etc/passwd",
    "/static/../../../../../etc/passwd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/nenya/query?name=../../../etc/passwd",
]


def test_path_traversal_and_bad_uploads_are_refused(server, data):
    for path in TRAVERSALS:
        status, body = _raw_get(server.url, path, server.token)
        assert status in (400, 403, 404, 405), (path, status)
        assert b"root:" not in body, path
    ok, png = server.get("nenya/thumb/3.png")
    assert ok == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert server.get(f"nenya/thumb/{N}.png")[0] == 404
    for name in ("../q.npy", "/etc/passwd", "..%2Fq.npy", "a/b.npy", "q.exe", ""):
        status, body = server.get("nenya/query?name=" + name, data=b"x", method="POST")
        assert status == 400, (name, status, body)
        assert "error" in json.loads(body)
    big = io.BytesIO()
    np.save(big, np.zeros((600, 600), np.float32))  # 1.4 MB > --max-upload-mb 1
    status, body = server.get("nenya/query?name=big.npy", data=big.getvalue(), method="POST")
    assert status == 413 and "at most" in json.loads(body)["error"]
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    status, body = server.get("nenya/query?name=p.npy", data=pickled.getvalue(), method="POST")
    assert status == 400 and "not a plain .npy" in json.loads(body)["error"]
    status, _ = server.get("nenya/thumb/3.png")
    assert status == 200 and server.proc.poll() is None  # still serving


def _open(p, url: str, page_url: str):
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1250, "height": 1100}, accept_downloads=True)
    errors: list[str] = []
    outside: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:", "ws://")) else outside.append(r.url))
    page.goto(page_url)
    page.wait_for_function("window.nenya && window.nenya.ready", timeout=120_000)
    return browser, page, errors, outside


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
def test_200k_points_in_chromium(server, data, tmp_path):
    from playwright.sync_api import sync_playwright

    t = data.table
    x, y = t["U0"].to_numpy(), t["U1"].to_numpy()
    lon, lat = t["lon"].to_numpy(dtype=float), t["lat"].to_numpy(dtype=float)
    with sync_playwright() as p:
        browser, page, errors, outside = _open(p, server.url, server.page)
        st = page.evaluate("nenya.state()")
        assert st["n"] == N and st["views"] == ["projection", "map"] and 0 < st["drawn"]["projection"] <= 20_000
        # zoomed out: a sample over a density image; zoomed in: every point in the viewport is drawn
        assert page.evaluate("Bokeh.documents[0].get_model_by_name('density:projection').visible") is True
        v = page.evaluate("nenya.setView('projection', 0.0, 0.3, 0.0, 0.3)")
        zoomed = int(((x >= 0) & (x <= 0.3) & (y >= 0) & (y <= 0.3)).sum())
        assert v == {"drawn": zoomed, "in_view": zoomed} and 0 < zoomed < 20_000
        rows = page.evaluate("Array.from(Bokeh.documents[0].get_model_by_name('nenya-points:projection').data.row)")
        assert sorted(rows) == np.flatnonzero((x >= 0) & (x <= 0.3) & (y >= 0) & (y <= 0.3)).tolist()
        assert page.evaluate("Bokeh.documents[0].get_model_by_name('density:projection').visible") is False
        page.evaluate("nenya.setView('projection', -8, 10, -4, 10)")
        # a lasso in the projection: exactly the ids Python finds among all 200,000
        poly = [[-1.0, -1.5], [3.5, -0.5], [4.0, 3.0], [1.0, 4.5], [-2.0, 2.0], [0.5, 1.0]]
        n_sel = page.evaluate("([p]) => nenya.select('projection', p)", [poly])
        want = t["id"].to_numpy()[inside(x, y, poly)]
        assert n_sel == len(want) > 10_000
        assert sorted(page.evaluate("nenya.selectedIds()")) == sorted(want.tolist())
        # a box in the map
        box = [[-40.0, -10.0], [25.0, -10.0], [25.0, 35.0], [-40.0, 35.0]]
        page.evaluate("([p]) => nenya.select('map', p)", [box])
        want = t["id"].to_numpy()[inside(lon, lat, box)]
        assert sorted(page.evaluate("nenya.selectedIds()")) == sorted(want.tolist())
        # filters and an export agree with pandas
        shown = page.evaluate("nenya.setFilter('pattern', ['front', 'eddy'])")
        shown = page.evaluate("nenya.setFilter('DT40', [1.5, 4])")
        ref = t[t["pattern"].isin(["front", "eddy"]) & t["DT40"].between(1.5, 4)]
        assert shown == len(ref) and sorted(page.evaluate("nenya.shownIds()")) == sorted(ref["id"])
        page.evaluate("([p]) => nenya.select('projection', p)", [poly])
        csv = pd.read_csv(io.StringIO(page.evaluate("nenya.exportCsv()")), keep_default_na=False)
        sel = ref[inside(ref["U0"].to_numpy(), ref["U1"].to_numpy(), poly)]
        assert csv["id"].tolist() == sel["id"].tolist()
        assert np.allclose(csv["DT40"], sel["DT40"]) and csv["pattern"].tolist() == sel["pattern"].tolist()
        # the panel lists the selection, with thumbnails fetched from the server
        assert page.evaluate("nenya._text('nenya-selinfo')").startswith(f"{len(sel):,} selected")
        # query by image: a cutout taken from the preproc file finds itself
        import h5py

        with h5py.File(data.preproc) as f:
            cut = f["valid"][17]
        buf = io.BytesIO()
        np.save(buf, cut)
        b64 = base64.b64encode(buf.getvalue()).decode()
        res = page.evaluate(
            """async ([b64]) => {
                 const bin = atob(b64), a = new Uint8Array(bin.length);
                 for (let i = 0; i < bin.length; i++) a[i] = bin.charCodeAt(i);
                 return nenya.query(new Blob([a]), 'cutout17.npy');
               }""",
            [b64],
        )
        assert res["neighbours"][0]["id"] == "valid/17" and res["neighbours"][0]["score"] < 1e-6
        assert res["placement"]["method"] == "neighbours-mean"
        rows = [n["row"] for n in res["neighbours"]]
        assert np.isclose(res["placement"]["x"], x[rows].mean()) and np.isclose(res["placement"]["y"], y[rows].mean())
        assert "placed by the mean position of its neighbours" in page.evaluate("nenya._text('nenya-query')")
        # an upload too large, or of a bad type, is refused with a message; the page keeps working
        err = page.evaluate(
            "nenya.query(new Blob([new Uint8Array(2 * 1024 * 1024)]), 'big.npy').then(() => 'no error', e => e.message)"
        )
        assert "at most" in err
        err = page.evaluate("nenya.query(new Blob(['MZ']), 'tool.exe').then(() => 'no error', e => e.message)")
        assert "a query is a .npy cutout or an image file" in err
        assert page.evaluate("nenya.neighbours('valid/17')")[:1] != ["valid/17"]
        assert page.evaluate("nenya.find('../../etc/passwd')") is False
        page.evaluate("nenya.clearFilters()")
        _mouse_lasso_upload_and_hostile_id(page, data, tmp_path)
        page.evaluate("nenya.find('valid/17')")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(Path(os.environ.get("NENYA_SHOTS", tmp_path)) / "serve.png"), full_page=True)
        browser.close()
    assert errors == [] and outside == []


PUBLIC_API = "Object.keys(window.nenya).filter((k) => !k.startsWith('_')).sort()"
SIDE_PANEL = """() => {
  const layout = Bokeh.documents[0].roots().find((r) => r.children && r.children.length === 2);
  const flat = (m) => (m.children ? m.children.flatMap(flat) : [[m.constructor.__name__, m.name]]);
  return flat(layout.children[1]).filter(([, name]) => !/^(filter|hist):/.test(String(name)));
}"""


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
def test_the_page_and_the_server_are_one_explorer(server, data, tmp_path):
    """One window.nenya and one side panel: the offline page and the server expose the same API names
    and the same panel (widgets, text boxes, table), and the page's answers are Promises as the server's."""
    from playwright.sync_api import sync_playwright

    from nenya.analysis.explorer import write_explorer

    t = data.table.iloc[:2000]
    path = write_explorer(str(tmp_path / "page.html"), t["U0"].to_numpy(), t["U1"].to_numpy(), t, color="pattern")
    with sync_playwright() as p:
        browser, page, errors, outside = _open(p, server.url, server.page)
        served = page.evaluate(PUBLIC_API), page.evaluate(SIDE_PANEL)
        offline = browser.new_page()
        offline.on("pageerror", lambda e: errors.append(str(e)))
        offline.goto("file://" + path)
        offline.wait_for_function("window.nenya && window.nenya.ready", timeout=60_000)
        assert offline.evaluate(PUBLIC_API) == served[0]
        assert {"select", "selectedIds", "setFilter", "exportCsv", "neighbours", "query", "setView"} <= set(served[0])
        assert offline.evaluate(SIDE_PANEL) == served[1] and len(served[1]) >= 15
        assert offline.evaluate("window.nenya.selectedIds() instanceof Promise") is True
        assert page.evaluate("window.nenya.selectedIds() instanceof Promise") is True
        # what only a server can do is refused on the page with a message that says so
        err = offline.evaluate("nenya.query(new Blob(['x']), 'q.npy').then(() => 'no error', (e) => e.message)")
        assert "needs nenya serve" in err
        browser.close()
    assert errors == [] and outside == []


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
def test_selection_statistics_over_every_item(server, data):
    """The selection statistics panel on the server: a lasso's shares by month, year and latitude
    against every shown item equal pandas over all 200,000, and follow a filter; the filters' charts
    count every item; the trends command names the latents and the filter."""
    from playwright.sync_api import sync_playwright

    t = data.table
    x, y = t["U0"].to_numpy(), t["U1"].to_numpy()
    poly = [[-1.0, -1.5], [3.5, -0.5], [4.0, 3.0], [1.0, 4.5], [-2.0, 2.0], [0.5, 1.0]]
    want = inside(x, y, poly)
    with sync_playwright() as p:
        browser, page, errors, outside = _open(p, server.url, server.page)
        page.evaluate("nenya.clearFilters().then(() => nenya.clearSelection())")
        page.evaluate("([p]) => nenya.select('projection', p)", [poly])
        st = page.evaluate("nenya.stats()")
        assert (st["shown"], st["selected"]) == (N, want.sum())
        got = {key: ([r["n"] for r in st[key]], [r["k"] for r in st[key]]) for key in ("month", "year", "lat")}
        assert got == bin_counts(t, np.ones(N, bool), want)
        month = pd.to_datetime(t["datetime"]).dt.month
        ref = (t[want].groupby(month[want]).size() / t.groupby(month).size()).sort_index().to_numpy()
        np.testing.assert_allclose([r["share"] for r in st["month"]], ref, rtol=1e-12)
        assert f"{want.sum():,} of the {N:,} shown" in page.evaluate("nenya._text('nenya-stats')")
        dt = t["DT40"].to_numpy(dtype=float)
        assert st["hist"]["DT40"]["sel"] == np.histogram(dt[want], bins=24, range=(dt.min(), dt.max()))[0].tolist()
        page.evaluate("nenya.setFilter('DT40', [1, 3])")
        keep = t["DT40"].between(1, 3).to_numpy()
        st = page.evaluate("nenya.stats()")
        got = {key: ([r["n"] for r in st[key]], [r["k"] for r in st[key]]) for key in ("month", "year", "lat")}
        assert (st["shown"], st["selected"]) == (keep.sum(), (want & keep).sum())
        assert got == bin_counts(t, keep, want & keep)
        assert st["hist"]["DT40"]["all"] == np.histogram(dt[keep], bins=24, range=(dt.min(), dt.max()))[0].tolist()
        assert f"{(want & keep).sum():,} of the {keep.sum():,} shown" in page.evaluate("nenya._text('nenya-stats')")
        cmd = page.evaluate("nenya.trendsCommand()")
        assert cmd == (f"nenya trends {data.latents} --ids nenya-selection.csv --within 'DT40 >= 1 and DT40 <= 3' "
                       "--output trends-selection")  # fmt: skip
        page.evaluate("nenya.clearFilters().then(() => nenya.clearSelection())")
        browser.close()
    assert errors == [] and outside == []


def _mouse_lasso_upload_and_hostile_id(page, data, tmp_path) -> None:
    """The UI's own paths: a lasso drawn with the mouse, the page's file input, and an id made of markup."""
    t = data.table
    x, y = t["U0"].to_numpy(), t["U1"].to_numpy()
    page.evaluate("nenya.clearSelection()")
    pts = [(-1.0, -1.0), (2.0, -1.0), (2.0, 2.0), (-1.0, 2.0)]
    draw_lasso(page, "projection", pts)
    sel = page.evaluate("nenya.selectedIds()")
    hit = inside(x, y, [list(q) for q in pts])
    loose = (x > -1.1) & (x < 2.1) & (y > -1.1) & (y < 2.1)
    assert set(sel) <= set(t["id"][loose]) and abs(len(sel) - hit.sum()) <= 0.02 * hit.sum()
    # the page's file input: a cutout picked by a person, encoded on the server
    import h5py

    with h5py.File(data.preproc) as f:
        np.save(tmp_path / "pick.npy", f["valid"][42])
    page.set_input_files("#nenya-upload", str(tmp_path / "pick.npy"))
    page.wait_for_function(
        "document.getElementById('nenya-upload-msg').textContent.includes('nearest')", timeout=60_000
    )
    assert page.text_content("#nenya-upload-msg").startswith("pick.npy: nearest valid/42")
    # an id made of markup stays text everywhere: panel, table, neighbours, hover
    hx, hy = float(x[data.n_real]), float(y[data.n_real])
    box = [[hx - 1e-6, hy - 1e-6], [hx + 1e-6, hy - 1e-6], [hx + 1e-6, hy + 1e-6], [hx - 1e-6, hy + 1e-6]]
    page.evaluate("([p]) => nenya.select('projection', p)", [box])
    assert page.evaluate("nenya.selectedIds()") == [HOSTILE]
    page.evaluate(f"nenya.neighbours({json.dumps(HOSTILE)})")
    assert page.evaluate("nenya.find(" + json.dumps(HOSTILE) + ")") is True
    page.mouse.move(*_screen(page, "projection", hx, hy))
    # one hover card: the thumbnail (fetched from the server by row) and the id as text
    card = page.locator('img[src^="nenya/thumb/"][style*="96px"]')
    card.first.wait_for(timeout=10_000)
    assert card.count() == 1
    assert HOSTILE in page.evaluate("nenya._text('nenya-nbrs')")
    assert page.locator('img[src="x"]').count() == 0 and page.evaluate("window.__pwned") is None


@pytest.mark.slow  # fits a UMAP (numba) in a fresh process: ~25 s; CI runs it with -m slow
def test_umap_placement_and_a_non_loopback_bind_warns(tmp_path):
    """`nenya umap --save-model` keeps the fitted UMAP; `nenya serve --umap-model` places an uploaded
    cutout with its transform, exactly as the UMAP itself does."""
    from nenya import cli
    from nenya.analysis import read_about
    from nenya.analysis.query import QueryEncoder
    from nenya.analysis.umap_files import load_umap, umap_dir

    d = make_collection(tmp_path / "u", 1500, n_real=200)
    coords = str(tmp_path / "u" / "u.parquet")
    assert cli.main(["umap", d.latents, "--ntrain", "1500", "--save-model", "served", "-o", coords]) == 0
    model = umap_dir() / "served_UMAP.pkl"
    assert model.is_file()
    s = start_server(
        [d.latents, "--coords", coords, "--umap-model", str(model), "--host", "0.0.0.0"], Path(d.latents).parent
    )
    try:
        import h5py

        with h5py.File(d.preproc) as f:
            buf = io.BytesIO()
            np.save(buf, f["valid"][9])
        status, body = s.get("nenya/query?name=c9.npy", data=buf.getvalue(), method="POST")
        assert status == 200, body
        res = json.loads(body)
        # UMAP's transform is seeded by the bits of the vector: encode the query as the server does
        vec = QueryEncoder.from_about(read_about(d.latents)).encode_bytes(buf.getvalue(), "c9.npy")
        want = load_umap(model).transform(vec)[0]
        assert res["neighbours"][0]["id"] == "valid/9" and res["placement"]["method"] == "umap-transform"
        assert np.allclose([res["placement"]["x"], res["placement"]["y"]], want, atol=1e-3)
    finally:
        rc, _, log = stop_server(s)
    assert rc == 0, log
    assert "anyone who can reach this machine" in log


def test_photo_folder_thumbnails_image_queries_and_a_saved_index(tmp_path, capsys):
    """A photo collection: thumbnails from the paths, an uploaded JPEG finds itself through a `nenya index`
    output, an image over the pixel limit is refused by the extraction's reader, and an index of other
    latents is refused at start."""
    from PIL import Image

    from nenya import cli
    from nenya.encoders import load_encoder
    from nenya.encoders.base import EncoderOptions
    from nenya.engines.runner import RunOptions
    from nenya.extract import extract_collection
    from photokit import picture, save

    root = tmp_path / "photos"
    for i in range(12):
        save(picture(i, size=(40, 56)), root / f"p{i}.jpg", "JPEG", quality=92)
    enc = load_encoder("timm:resnet18", options=EncoderOptions(size=48)).to("cpu")
    out = str(tmp_path / "photos.parquet")
    extract_collection(f"images:{root}", enc, out, options=RunOptions(batch_size=4, num_workers=0, progress=False))
    assert cli.main(["pca", out, "-n", "2"]) == 0 and cli.main(["index", out]) == 0
    few = tmp_path / "few"
    for i in range(8):
        save(picture(i, size=(40, 56)), few / f"p{i}.jpg", "JPEG", quality=92)
    other = str(tmp_path / "other.parquet")
    extract_collection(f"images:{few}", enc, other, options=RunOptions(batch_size=4, num_workers=0, progress=False))
    assert cli.main(["index", other]) == 0
    capsys.readouterr()
    pca = str(tmp_path / "photos_pca.parquet")
    s = start_server([out, "--coords", pca, "--index", str(tmp_path / "photos.faiss")], tmp_path)
    try:
        status, png = s.get("nenya/thumb/0.png")
        assert status == 200 and Image.open(io.BytesIO(png)).size == (64, 64)
        status, body = s.get("nenya/query?name=p3.jpg", data=(root / "p3.jpg").read_bytes(), method="POST")
        res = json.loads(body)
        assert status == 200 and res["neighbours"][0]["id"] == "p3.jpg" and res["neighbours"][0]["score"] < 1e-6
        bomb = io.BytesIO()
        Image.new("1", (10_000, 9_000)).save(bomb, format="PNG")  # 90 million pixels in a small file
        status, body = s.get("nenya/query?name=bomb.png", data=bomb.getvalue(), method="POST")
        assert status == 400 and "pixel limit" in json.loads(body)["error"]
        assert s.get("nenya/thumb/1.png")[0] == 200  # still serving
    finally:
        assert stop_server(s)[0] == 0
    # an index of other latents is refused at start, saying what to do
    other_index = str(tmp_path / "other.faiss")
    assert cli.main(["serve", out, "--coords", pca, "--index", other_index, "--port", "0"]) == 2
    assert "rebuild it with `nenya index" in capsys.readouterr().err


def test_no_password_in_a_url_reaches_the_page_or_the_terminal(monkeypatch, capsys):
    import nenya.analysis.serve as serve
    from nenya import cli

    seen: dict = {}
    monkeypatch.setattr(serve, "open_collection", lambda *a, **k: _small(300)[0])
    monkeypatch.setattr(serve, "run_server", lambda state, **k: seen.update(title=state.options.title))
    assert cli.main(["serve", "s3://KEY:sekret@bucket/x.parquet", "--port", "0"]) == 0
    out = capsys.readouterr()
    assert seen["title"] == "nenya serve: s3://***@bucket/x.parquet"
    assert "sekret" not in out.err + out.out
