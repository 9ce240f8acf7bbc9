"""Helpers for tests (and benches) that look at our pages in headless Chromium: the reference
point-in-polygon of a selection, and a view's data coordinates on the screen."""

from __future__ import annotations

import numpy as np

CHROMIUM = "/usr/bin/chromium"


def inside(px: np.ndarray, py: np.ndarray, poly: list[list[float]]) -> np.ndarray:
    """Point in polygon (even-odd rule), the reference for a page's or a server's selection."""
    hit = np.zeros(len(px), bool)
    j = len(poly) - 1
    for i in range(len(poly)):
        xi, yi = poly[i]
        xj, yj = poly[j]
        cross = (yi > py) != (yj > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = (xj - xi) * (py - yi) / (yj - yi) + xi
        hit ^= cross & (px < xint)
        j = i
    return hit


def screen(page, view: str, x: float, y: float) -> tuple[float, float]:
    """Where the data point (x, y) of a Bokeh view is on the page, in CSS pixels."""
    return page.evaluate(
        """([view, x, y]) => {
          const v = Bokeh.index.find_one(Bokeh.documents[0].get_model_by_name(view));
          const r = v.el.getBoundingClientRect();
          return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)];
        }""",
        [view, x, y],
    )


def draw_lasso(page, view: str, pts: list[tuple[float, float]]) -> None:
    """Draw a closed lasso through data points ``pts`` with the mouse (the views' default drag tool)."""
    page.mouse.move(*screen(page, view, *pts[0]))
    page.mouse.down()
    for q in [*pts[1:], pts[0]]:
        page.mouse.move(*screen(page, view, *q), steps=5)
    page.mouse.up()


def bin_counts(table, shown: np.ndarray, selected: np.ndarray) -> dict[str, tuple[list[int], list[int]]]:
    """The selection statistics' reference with pandas: points shown and selected per month of year
    and per year of ``datetime`` (UTC) and per ten-degree band of ``lat``, (shown, selected) by key."""
    import pandas as pd

    t = pd.to_datetime(table["datetime"], utc=True, format="mixed")
    lat = pd.to_numeric(table["lat"])
    lo = np.floor(lat.min() / 10) * 10
    keys = {"month": t.dt.month - 1, "year": t.dt.year - t.dt.year.min(), "lat": ((lat - lo) // 10).astype(int)}
    n = {"month": 12, "year": int(t.dt.year.max() - t.dt.year.min() + 1), "lat": int(np.ceil(lat.max() / 10) - lo / 10)}
    out = {}
    for key, k in keys.items():
        a = k[shown].value_counts().reindex(range(n[key]), fill_value=0).tolist()
        s = k[selected].value_counts().reindex(range(n[key]), fill_value=0).tolist()
        out[key] = (a, s)
    return out
