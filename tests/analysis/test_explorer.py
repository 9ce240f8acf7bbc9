"""The explorer page in headless Chromium: loads offline, hover shows an image, click lists neighbours."""

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

CHROMIUM = "/usr/bin/chromium"
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

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")]


def _page_data(tmp_path, n: int, *, n_images: int = 300, thumbs: int = 2000, k: int = 6):
    rng = np.random.default_rng(0)
    pre = write_preproc(tmp_path / "e_preproc.h5", n_valid=n_images, size=16, seed=3)
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
        }
    )
    table.loc[0, "id"] = "../x</script><b>"  # hostile ids stay text
    table.loc[1, "id"] = "nul\x00id"
    out = write_explorer(
        str(tmp_path / "page.html"),
        xy[:, 0],
        xy[:, 1],
        table,
        vectors=vectors,
        images=ImageLookup(table, images=pre),
        color="label",
        k=k,
        max_thumbs=thumbs,
    )
    return out, xy, table


def _open(p, path):
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    requests = []
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("file://" + path)
    page.wait_for_function("window.nenyaExplorer && window.nenyaExplorer.ready", timeout=60_000)
    return browser, page, requests, errors


def _canvas_colours(page) -> int:
    png = page.locator("#canvas").screenshot()
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return len(np.unique(rgb, axis=0))


def test_explorer_hover_click_colour(tmp_path):
    from playwright.sync_api import sync_playwright

    path, xy, table = _page_data(tmp_path, 600)
    html = open(path, encoding="utf-8").read()
    assert "</script><b>" not in html.split('id="nenya-data"')[1].split("</script>")[0]
    with sync_playwright() as p:
        browser, page, requests, errors = _open(p, path)
        try:
            assert errors == []
            box = page.locator("#canvas").bounding_box()
            assert _canvas_colours(page) >= 5  # white + 4 classes (and antialiasing of nothing else)
            # hover a point that has a thumbnail: the image under the pointer appears
            row = int(page.evaluate("window.nenyaExplorer.thumbRows[5]"))
            x, y = page.evaluate(f"window.nenyaExplorer.screenPos({row})")
            assert page.get_attribute("#hover-img", "src") in (None, "")
            page.mouse.move(box["x"] + x, box["y"] + y)
            page.wait_for_function("document.getElementById('hover-img').src.startsWith('data:image/')")
            assert page.locator("#hover-id").text_content().startswith(str(table["id"][row]))
            # click it: its neighbours are listed
            page.mouse.click(box["x"] + x, box["y"] + y)
            page.wait_for_function("document.querySelectorAll('#neighbours li').length > 0")
            assert page.locator("#neighbours li").count() == 6
            assert page.locator("#sel-id").text_content().startswith("selected: " + str(table["id"][row]))
            # the hostile id is shown as text
            page.evaluate("window.nenyaExplorer.select(0)")
            assert "../x</script><b>" in page.locator("#sel-id").text_content()
            assert page.locator("#sel-id b").count() == 0
            # colour by a numeric column: the legend becomes a colour bar and the canvas changes
            before = page.locator("#canvas").screenshot()
            page.select_option("#color-by", "DT40")
            page.wait_for_function("document.querySelector('#legend canvas') !== null")
            page.wait_for_timeout(100)
            assert page.locator("#canvas").screenshot() != before
            assert _canvas_colours(page) > 20
            assert requests == [], f"the page tried to reach the network: {requests[:3]}"
            assert errors == []
        finally:
            browser.close()


@pytest.mark.slow
def test_explorer_100k_points(tmp_path):
    """100,000 points: all of them on the page, a pointer sweep finds images, a click lists neighbours.
    (How fast it draws and hovers is measured by benchmarks, not asserted here.)"""
    from playwright.sync_api import sync_playwright

    path, xy, table = _page_data(tmp_path, 100_000, n_images=1000, thumbs=1000, k=10)
    with sync_playwright() as p:
        browser, page, requests, errors = _open(p, path)
        try:
            assert page.evaluate("window.nenyaExplorer.n") == 100_000  # no decimation at the default max_points
            thumb_rows = page.evaluate("Array.from(window.nenyaExplorer.thumbRows)")
            assert 0 < len(thumb_rows) <= 1000 and len(set(thumb_rows)) == len(thumb_rows)
            assert all(0 <= r < 100_000 for r in thumb_rows)
            box = page.locator("#canvas").bounding_box()
            for dx in range(0, 200, 20):  # a pointer sweep
                page.mouse.move(box["x"] + 300 + dx, box["y"] + 300 + dx / 2)
            page.wait_for_function("document.getElementById('hover-img').src.startsWith('data:image/')")
            assert int(page.get_attribute("#hover-img", "data-row")) in set(thumb_rows)
            assert page.evaluate("window.nenyaExplorer.stats.draws") >= 1
            # click a known point: it is selected and its 10 neighbours are listed
            row = thumb_rows[len(thumb_rows) // 2]
            x, y = page.evaluate(f"window.nenyaExplorer.screenPos({row})")
            page.mouse.click(box["x"] + x, box["y"] + y)
            page.wait_for_function("document.querySelectorAll('#neighbours li').length > 0")
            assert page.locator("#neighbours li").count() == 10
            assert page.locator("#sel-id").text_content().startswith("selected: ")
            assert _canvas_colours(page) >= 5
            assert errors == [] and requests == []
        finally:
            browser.close()
