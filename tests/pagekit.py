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
