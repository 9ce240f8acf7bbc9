"""The explorer in JupyterLab, in headless Chromium: a JupyterLab server started here (127.0.0.1, a
token, its folders and kernel spec in a temporary folder, announcements and update checks off) runs
``test_notebook``'s notebook; a lasso drawn with the mouse is the next cell's ``.selection`` (the
numpy point-in-polygon of the lasso Bokeh drew), ``.select(ids)`` from Python is selected in the
page's data source, and a filter set from Python hides the points in the page (its BooleanFilter and
its filter widget). Every request the page makes goes to the server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from test_notebook import IDS, check_filter, check_select, kernel_env, notebook, table_file

from pagekit import CHROMIUM
from pagekit import inside as _inside

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed"),
]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SHOT = Path("/tmp/shots/notebook.png")
# the explorer's document among the page's (JupyterLab holds others)
DOC = "Bokeh.documents.find((d) => d.get_model_by_name('nenya-points') && d.get_model_by_name('nenya-table-source'))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_lab(root: Path, env: dict[str, str], port: int, token: str, log: Path) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.open_browser=False",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")  # containers
    proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    for _ in range(240):
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab stopped: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"JupyterLab did not answer: {log.read_text()[-3000:]}")


def _stop_lab(proc: subprocess.Popen) -> None:
    import psutil

    kids = psutil.Process(proc.pid).children(recursive=True)  # the kernels
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise
    _, alive = psutil.wait_procs(kids, timeout=15)
    assert not alive, f"left running: {[p.pid for p in alive]}"


def _run_cell(page, i: int) -> None:
    page.evaluate(
        """(i) => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i;
                    return window.jupyterapp.commands.execute('notebook:run-cell'); }""",
        i,
    )


def _wait_file(path: Path, timeout: float = 90) -> object:
    end = time.time() + timeout
    while not path.exists():
        assert time.time() < end, f"no {path.name}: the cell did not run"
        time.sleep(0.2)
    time.sleep(0.2)
    return json.loads(path.read_text())


def _screen(page, x: float, y: float) -> tuple[float, float]:
    """Where the projection's data point (x, y) is on the page, on a whole pixel."""
    sx, sy = page.evaluate(
        f"""([x, y]) => {{
          const v = Bokeh.index.find_one(({DOC}).get_model_by_name('projection'));
          const r = v.el.getBoundingClientRect();
          return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)];
        }}""",
        [x, y],
    )
    return round(sx), round(sy)


def _lasso(page, pts: list[tuple[float, float]]) -> list[list[float]]:
    """Draw a lasso through ``pts`` with the mouse; return the polygon Bokeh selected with (data coordinates)."""
    page.evaluate(
        """() => { const f = window.nenya._geometry;
                   window.nenya._geometry = (ev, view) => { if (ev.final) window.__lasso = [Array.from(ev.geometry.x), Array.from(ev.geometry.y)]; return f(ev, view); }; }"""
    )
    page.evaluate(f"Bokeh.index.find_one(({DOC}).get_model_by_name('projection')).el.scrollIntoView()")
    page.mouse.move(*_screen(page, *pts[0]))
    page.mouse.down()
    for q in [*pts[1:], pts[0]]:
        page.mouse.move(*_screen(page, *q), steps=8)
    page.mouse.up()
    page.wait_for_function("window.__lasso")
    gx, gy = page.evaluate("window.__lasso")
    return [[a, b] for a, b in zip(gx, gy)]


def test_lasso_in_jupyterlab_is_the_next_cells_selection(tmp_path):
    from playwright.sync_api import sync_playwright

    env = kernel_env(tmp_path)
    labconfig = Path(env["JUPYTER_CONFIG_DIR"]) / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    out = tmp_path / "out"
    out.mkdir()
    data = table_file(tmp_path)
    nbformat.write(notebook(data, out), tmp_path / "explore.ipynb")
    table = pd.read_parquet(data)
    port, token = _free_port(), "nenya-test-token"
    lab = _start_lab(tmp_path, env, port, token, tmp_path / "lab.log")
    base = f"http://127.0.0.1:{port}"
    outside: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.on(
                "request",
                lambda r: (
                    None if r.url.startswith((base, "ws://127.0.0.1", "data:", "blob:")) else outside.append(r.url)
                ),
            )
            page.goto(f"{base}/lab/tree/explore.ipynb?reset&token={token}")
            page.wait_for_function(
                "window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                timeout=120_000,
            )  # fmt: skip
            page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.ready")
            _run_cell(page, 0)
            _run_cell(page, 1)
            page.wait_for_function(f"window.nenya && window.nenya.ready && ({DOC})", timeout=120_000)
            # a lasso with the mouse around the cluster at (8, 1): the next cell's .selection
            poly = _lasso(page, [(5.5, -1.5), (10.5, -2.0), (11.0, 3.5), (8.0, 4.5), (5.0, 3.0)])
            page.wait_for_timeout(500)
            SHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOT))
            _run_cell(page, 2)
            got = _wait_file(out / "lasso.json")
            x, y = table["U0"].to_numpy(np.float32).astype(float), table["U1"].to_numpy(np.float32).astype(float)
            want = table["id"][_inside(x, y, poly)].tolist()
            assert len(want) > 500 and sorted(got) == sorted(want)
            assert len(page.evaluate("window.nenya.selectedIds()")) == len(want)
            # .select(ids) from Python: selected in the page's data source
            _run_cell(page, 3)
            _wait_file(out / "select.json")
            ids = check_select(out)
            page.wait_for_function(f"({DOC}).get_model_by_name('nenya-points').selected.indices.length === {len(IDS)}")
            rows = page.evaluate(
                f"Array.from(({DOC}).get_model_by_name('nenya-points').selected.indices).sort((a, b) => a - b)"
            )
            assert rows == sorted(IDS)
            # a filter from Python hides the points in the page: its BooleanFilter, and its widget follows
            _run_cell(page, 4)
            _wait_file(out / "filter.json")
            keep = check_filter(out, ids)
            page.wait_for_function(
                f"Array.from(({DOC}).get_model_by_name('nenya-filter').booleans).filter(Boolean).length === {int(keep.sum())}"
            )
            shown = page.evaluate(f"Array.from(({DOC}).get_model_by_name('nenya-filter').booleans)")
            assert np.array_equal(np.array(shown, bool), keep)
            cols = page.evaluate("window.nenya.columns().then((c) => c.map((x) => x.name))")
            field = f"filter:c{cols.index('label')}"
            page.wait_for_function(f"({DOC}).get_model_by_name('{field}').value.length === 2")
            assert len(page.evaluate("window.nenya.shownIds()")) == int(keep.sum())
            browser.close()
    finally:
        _stop_lab(lab)
    assert not outside, outside
