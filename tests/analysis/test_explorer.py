"""The explorer page in headless Chromium, driven through ``window.nenya`` and the mouse: polygon
selections in both views, filters, CSV export, hover, neighbours, colour, offline, hostile ids."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nenya.analysis import write_explorer
from nenya.analysis.images import ImageLookup
from nenya.sample_data import write_preproc
from pagekit import CHROMIUM, bin_counts, draw_lasso
from pagekit import inside as _inside
from pagekit import screen as _screen

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOSTILE = "<img src=x onerror=window.__pwned=1>"

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")]


def _table(n: int, n_images: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, n)
    centres = np.array([[0, 0], [8, 1], [3, 7], [-5, 5]], dtype=np.float32)
    xy = centres[cls] + rng.normal(size=(n, 2)).astype(np.float32)
    vectors = (np.eye(4, 16)[cls] * 3 + rng.normal(size=(n, 16))).astype(np.float32)
    table = pd.DataFrame(
        {
            "id": [f"valid/{i}" for i in range(n)],
            "partition": "valid",
            "row": np.arange(n) % n_images,
            "label": np.array(["a", "b", "c", "d"])[cls],
            "DT40": rng.gamma(2, 1, n),
            "datetime": pd.Timestamp("2012-01-01") + pd.to_timedelta(rng.integers(0, 3650, n), unit="D"),
            "lat": rng.uniform(-60, 60, n),
            "lon": rng.uniform(-180, 180, n),
        }
    )
    table.loc[3, "id"] = HOSTILE
    return xy, vectors, table


def _page(tmp_path, n: int, *, n_images: int = 300, k: int = 6, **kw):
    xy, vectors, table = _table(n, n_images)
    pre = write_preproc(tmp_path / "e_preproc.h5", n_valid=n_images, size=16, seed=3)
    out = write_explorer(
        str(tmp_path / "page.html"),
        xy[:, 0],
        xy[:, 1],
        table,
        vectors=vectors,
        images=ImageLookup(table, images=pre),
        color="label",
        k=k,
        **kw,
    )
    return out, xy, table


def _open(p, path):
    """The page, with every request intercepted: file:// loads the page itself, anything else is counted
    and refused."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1250, "height": 1000}, accept_downloads=True)
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(("file:", "data:", "blob:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("file://" + path)
    page.wait_for_function("window.nenya && window.nenya.ready", timeout=120_000)
    return browser, page, outside, errors


def _selected_rows(page, renderer: str) -> list[int]:
    return page.evaluate(
        f"Array.from(Bokeh.documents[0].get_model_by_name('{renderer}').data_source.selected.indices).sort((a,b)=>a-b)"
    )


def _projection_png(page) -> np.ndarray:
    png = page.locator(".bk-Figure").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_selections_filters_and_export_agree_with_pandas(tmp_path):
    path, xy, table = _page(tmp_path, 3000)
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    lon, lat = table["lon"].to_numpy(), table["lat"].to_numpy()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page, outside, errors = _open(p, path)
        try:
            assert page.evaluate("window.nenya.views()") == ["projection", "map"]
            # a lasso-like polygon in the projection
            poly = [[-2.5, -2.0], [3.0, -1.5], [4.0, 3.0], [0.5, 5.0], [-3.0, 2.0]]
            want = _inside(x, y, poly)
            assert page.evaluate("([v, p]) => window.nenya.select(v, p)", ["projection", poly]) == want.sum() > 100
            assert page.evaluate("window.nenya.selectedIds()") == table["id"][want].tolist()
            # the same points are selected in the map (one source behind both views)
            assert _selected_rows(page, "points:map") == _selected_rows(page, "points:projection")
            assert _selected_rows(page, "points:map") == np.flatnonzero(want).tolist()
            # a polygon in the map, in lon/lat
            mpoly = [[-120.0, -40.0], [10.0, -50.0], [60.0, 20.0], [-30.0, 55.0]]
            mwant = _inside(lon, lat, mpoly)
            assert page.evaluate("([v, p]) => window.nenya.select(v, p)", ["map", mpoly]) == mwant.sum() > 100
            assert page.evaluate("window.nenya.selectedIds()") == table["id"][mwant].tolist()
            assert _selected_rows(page, "points:projection") == np.flatnonzero(mwant).tolist()
            # filters (AND) prune the selection and hide points everywhere
            page.evaluate("window.nenya.setFilter('DT40', [1, 2.5])")
            page.evaluate("window.nenya.setFilter('label', ['a', 'c'])")
            page.evaluate("window.nenya.setFilter('datetime', ['2013-06-01', '2019-12-31T23:59:59Z'])")
            t = pd.to_datetime(table["datetime"]).dt.tz_localize("UTC")
            keep = (
                table["DT40"].between(1, 2.5)
                & table["label"].isin(["a", "c"])
                & (t >= pd.Timestamp("2013-06-01", tz="UTC"))
                & (t <= pd.Timestamp("2019-12-31T23:59:59", tz="UTC"))
            ).to_numpy()
            assert page.evaluate("window.nenya.shownIds()") == table["id"][keep].tolist()
            assert page.evaluate("window.nenya.selectedIds()") == table["id"][mwant & keep].tolist()
            # the export holds exactly those rows with their metadata, and the button downloads the same text
            csv = page.evaluate("window.nenya.exportCsv()")
            got = pd.read_csv(io.StringIO(csv))
            ref = table[mwant & keep].reset_index(drop=True)
            assert got["id"].tolist() == ref["id"].tolist()
            assert got["label"].tolist() == ref["label"].tolist()
            np.testing.assert_array_equal(got["DT40"].to_numpy(), ref["DT40"].to_numpy())
            np.testing.assert_array_equal(got["lat"].to_numpy(), ref["lat"].to_numpy())
            assert (pd.to_datetime(got["datetime"]) == pd.to_datetime(ref["datetime"]).dt.tz_localize("UTC")).all()
            with page.expect_download() as dl:
                page.get_by_role("button", name="Export CSV").click()
            assert open(dl.value.path(), encoding="utf-8").read() == csv
            # find an id: both views centre on it
            assert page.evaluate("window.nenya.find('valid/20')") is True
            cx = page.evaluate(
                "(() => { const f = Bokeh.documents[0].get_model_by_name('projection'); "
                "return (f.x_range.start + f.x_range.end) / 2; })()"
            )
            mx = page.evaluate(
                "(() => { const f = Bokeh.documents[0].get_model_by_name('map'); "
                "return (f.x_range.start + f.x_range.end) / 2; })()"
            )
            assert cx == pytest.approx(float(x[20]), abs=1e-4) and mx == pytest.approx(float(lon[20]), abs=1e-4)
            assert page.evaluate("window.nenya.find('no such id')") is False
            # clearing the filters shows everything again; a filter on an unknown column is a clear error
            assert page.evaluate("window.nenya.clearFilters()") == len(table)
            with pytest.raises(Exception, match="no filter for column nope"):
                page.evaluate("window.nenya.setFilter('nope', [0, 1])")
            assert outside == [], f"the page tried to reach the network: {outside[:3]}"
            assert errors == []
        finally:
            browser.close()


def _counts_of(st: dict) -> dict:
    """(shown, selected) per bin of the page's statistics, as ``pagekit.bin_counts`` gives them."""
    return {key: ([r["n"] for r in st[key]], [r["k"] for r in st[key]]) for key in ("month", "year", "lat")}


def test_selection_statistics_histograms_and_trends_command_agree_with_pandas(tmp_path):
    """The selection statistics panel: shares by month, year and latitude of a lasso selection against
    the points shown (pandas), updated by a filter; the filters' charts (numpy histograms); and the
    command it writes, which run by `nenya trends` measures the same monthly shares."""
    import json
    import subprocess
    import sys

    from playwright.sync_api import sync_playwright

    xy, vectors, table = _table(3000, 300)
    source = str(tmp_path / "points.parquet")
    table.to_parquet(source)
    path = write_explorer(str(tmp_path / "page.html"), xy[:, 0], xy[:, 1], table, color="label", source=source)
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    poly = [[-2.5, -2.0], [3.0, -1.5], [4.0, 3.0], [0.5, 5.0], [-3.0, 2.0]]
    want = _inside(x, y, poly)
    everything = np.ones(len(table), bool)
    with sync_playwright() as p:
        browser, page, outside, errors = _open(p, path)
        try:
            assert "select points" in page.evaluate("nenya._text('nenya-stats')")
            page.evaluate("([v, p]) => window.nenya.select(v, p)", ["projection", poly])
            st = page.evaluate("nenya.stats()")
            assert st["selected"] == want.sum() and st["shown"] == len(table)
            assert _counts_of(st) == bin_counts(table, everything, want)
            shares = [r["share"] for r in st["month"]]
            ref = (
                table[want].groupby(table["datetime"].dt.month).size()
                / table.groupby(table["datetime"].dt.month).size()
            )
            np.testing.assert_allclose(shares, ref.sort_index().to_numpy(), rtol=1e-12)
            # each filter's chart: the points shown and the selected ones per bin (numpy's histogram)
            dt = table["DT40"].to_numpy()
            h = np.histogram(dt, bins=24, range=(dt.min(), dt.max()))[0]
            assert st["hist"]["DT40"]["all"] == h.tolist()
            assert st["hist"]["DT40"]["sel"] == np.histogram(dt[want], bins=24, range=(dt.min(), dt.max()))[0].tolist()
            assert st["hist"]["label"]["sel"] == [int(((table["label"] == v) & want).sum()) for v in "abcd"]
            text = page.evaluate("nenya._text('nenya-stats')")
            assert f"{want.sum():,} of the {len(table):,} shown" in text
            # a filter: the panel follows (fewer shown, the selection pruned), still equal to pandas
            page.evaluate("window.nenya.setFilter('DT40', [1, 3])")
            keep = table["DT40"].between(1, 3).to_numpy()
            st = page.evaluate("nenya.stats()")
            assert (st["shown"], st["selected"]) == (keep.sum(), (want & keep).sum())
            assert _counts_of(st) == bin_counts(table, keep, want & keep)
            assert st["hist"]["DT40"]["all"] == np.histogram(dt[keep], bins=24, range=(dt.min(), dt.max()))[0].tolist()
            assert f"{(want & keep).sum():,} of the {keep.sum():,} shown" in page.evaluate("nenya._text('nenya-stats')")
            # the button writes the command and downloads the ids it names
            with page.expect_download() as dl:
                page.get_by_role("button", name="nenya trends command").click()
            page.wait_for_function("nenya._text('nenya-trends').includes('nenya trends')")
            cmd = page.evaluate("nenya.trendsCommand()")
            assert cmd in page.evaluate("nenya._text('nenya-trends')")
            assert cmd == (f"nenya trends {source} --ids nenya-selection.csv --within 'DT40 >= 1 and DT40 <= 3' "
                           "--output trends-selection")  # fmt: skip
            os.replace(dl.value.path(), tmp_path / "nenya-selection.csv")
            assert outside == [] and errors == []
        finally:
            browser.close()
    argv = [sys.executable, "-m", "nenya", *__import__("shlex").split(cmd)[1:]]
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    seasonal = pd.read_csv(tmp_path / "trends-selection" / "seasonal.csv")
    assert seasonal["n"].tolist() == [r["n"] for r in st["month"]]
    assert seasonal["k"].tolist() == [r["k"] for r in st["month"]]
    assert json.loads((tmp_path / "trends-selection" / "summary.json").read_text())["in_region"] == st["selected"]


def test_mouse_hover_click_colour_and_hostile_ids(tmp_path):
    path, xy, table = _page(tmp_path, 1500)
    html = open(path, encoding="utf-8").read()
    assert HOSTILE not in html  # not even inside the data
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page, outside, errors = _open(p, path)
        try:
            # hover a point: its thumbnail (or the nearest one's) and its id appear in the preview
            row = page.evaluate("window.nenya._thumbRows()[7]")
            sx, sy = _screen(page, "projection", float(xy[row, 0]), float(xy[row, 1]))
            page.mouse.move(sx, sy)
            page.wait_for_function("window.nenya._text('nenya-preview').length > 0", timeout=10_000)
            assert page.locator("img.p").count() == 1
            assert page.locator("img.p").get_attribute("src").startswith("data:image/")
            # and next to the pointer, a card with the image and the id as text
            page.wait_for_function("document.getElementById('nenya-hover').style.display === 'block'")
            assert page.locator("#nenya-hover img").get_attribute("src").startswith("data:image/")
            assert page.locator("#nenya-hover").text_content().startswith(str(table["id"][row]))
            # click it: its 6 neighbours are listed and ringed
            page.mouse.click(sx, sy)
            page.wait_for_function("window.nenya._text('nenya-nbrs').startsWith('neighbours of')")
            assert page.evaluate("Bokeh.documents[0].get_model_by_name('nenya-marks').data.x.length") == 7
            # a lasso drawn with the mouse selects points inside it, in both views, and fills the panel
            pts = [(-1.5, -1.5), (1.5, -1.5), (1.5, 1.5), (-1.5, 1.5)]
            draw_lasso(page, "projection", pts)
            sel = page.evaluate("window.nenya.selectedIds()")
            inside = _inside(xy[:, 0].astype(float), xy[:, 1].astype(float), [list(q) for q in pts])
            assert len(sel) > 20 and set(sel) <= set(table["id"][_inside_loose(xy, pts)])
            assert abs(len(sel) - inside.sum()) <= 0.1 * inside.sum()  # pixel rounding at the edge only
            assert page.evaluate("window.nenya._text('nenya-selinfo')").startswith(f"{len(sel):,} selected")
            assert page.locator("img.g").count() > 0
            # the hostile id: selected, listed as a neighbour, in the table and the preview, and still only text
            hostile_row = int(np.flatnonzero(table["id"] == HOSTILE)[0])
            page.evaluate(f"window.nenya.neighbours({HOSTILE!r})")
            hx, hy = _screen(page, "projection", float(xy[hostile_row, 0]), float(xy[hostile_row, 1]))
            page.mouse.move(hx, hy)
            page.evaluate(
                "([x, y]) => window.nenya.select('projection', [[x-0.01,y-0.01],[x+0.01,y-0.01],[x+0.01,y+0.01],[x-0.01,y+0.01]])",
                [float(xy[hostile_row, 0]), float(xy[hostile_row, 1])],
            )
            assert HOSTILE in page.evaluate("window.nenya.selectedIds()")
            page.wait_for_timeout(300)
            assert HOSTILE in page.evaluate("window.nenya._text('nenya-nbrs')")
            assert page.locator('img[src="x"]').count() == 0
            assert page.evaluate("window.__pwned") is None
            # colour by a number: the colour bar shows and the picture changes
            before = _projection_png(page)
            page.evaluate("window.nenya.setColour('DT40')")
            page.wait_for_timeout(300)
            assert page.evaluate("Bokeh.documents[0].get_model_by_name('nenya-colorbar').visible") is True
            assert not np.array_equal(before, _projection_png(page))
            assert outside == [] and errors == []
        finally:
            browser.close()


def _inside_loose(xy: np.ndarray, pts) -> np.ndarray:
    """Points within a slightly larger square than the lasso (the mouse path is rounded to pixels)."""
    lo, hi = min(q[0] for q in pts) - 0.2, max(q[0] for q in pts) + 0.2
    return (xy[:, 0] > lo) & (xy[:, 0] < hi) & (xy[:, 1] > lo) & (xy[:, 1] < hi)


def test_sample_beyond_max_points_is_stated(tmp_path):
    path, xy, table = _page(tmp_path, 4000, k=0, max_points=1000)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page, outside, errors = _open(p, path)
        try:
            shown = page.evaluate("window.nenya.shownIds()")
            assert len(shown) == 1000 and set(shown) <= set(table["id"])
            assert "1,000 of 4,000 points (a random sample" in page.evaluate("window.nenya._text('nenya-note')")
            assert outside == [] and errors == []
        finally:
            browser.close()


@pytest.mark.slow
def test_100k_points_select_and_filter(tmp_path):
    """100,000 points: the page loads, a polygon selection and a filter give pandas' answer. (How fast, and at
    250,000 and 1,000,000 points, is measured by bench/explorer.py, not here: it keeps the suite short.)"""
    from playwright.sync_api import sync_playwright

    n = 100_000
    xy, _, table = _table(n, 1000)
    path = write_explorer(str(tmp_path / "big.html"), xy[:, 0], xy[:, 1], table, color="label")
    with sync_playwright() as p:
        browser, page, outside, errors = _open(p, path)
        try:
            poly = [[-1.0, -1.0], [9.0, -1.0], [9.0, 3.0], [-1.0, 3.0]]
            want = _inside(xy[:, 0].astype(float), xy[:, 1].astype(float), poly)
            assert page.evaluate("([v, p]) => window.nenya.select(v, p)", ["projection", poly]) == want.sum()
            page.evaluate("window.nenya.setFilter('DT40', [0.5, 1.5])")
            keep = table["DT40"].between(0.5, 1.5).to_numpy()
            assert page.evaluate("window.nenya.selectedIds().then((s) => s.length)") == (want & keep).sum()
            assert outside == [] and errors == []
        finally:
            browser.close()
