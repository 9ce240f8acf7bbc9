"""One view of a ``nenya serve`` session: its figure, the sample of points drawn in its viewport
over a density image of every point there, and its marks (a point and its neighbours, a query).

The sample is chosen by a fixed priority (:meth:`Collection.sample`), so panning never reshuffles it;
zoom in far enough and every point in the viewport is drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nenya.analysis.explorer.coastlines import coastlines
from nenya.analysis.explorer.layout import draw_coastlines, span, view_figure, wire_view
from nenya.analysis.serve.collection import Collection

__all__ = ["ServedView", "DENSITY_BINS"]

DENSITY_BINS = (320, 240)


class ServedView:
    """The projection or the map of one session (the document models and what they draw)."""

    def __init__(self, c: Collection, name: str, fill: object, limit: int) -> None:
        from bokeh.models import ColumnDataSource, LinearColorMapper
        from bokeh.palettes import Blues256

        self.c, self.name, self.limit = c, name, limit
        self.px, self.py = c.xy(name)
        self.fig = self._figure()
        self.box = (self.fig.x_range.start, self.fig.x_range.end, self.fig.y_range.start, self.fig.y_range.end)
        self.shown = np.zeros(0, np.int64)
        self.drawn, self.inside = 0, 0
        self.density = ColumnDataSource(
            {"image": [], "x": [], "y": [], "dw": [], "dh": []}, name=f"nenya-density:{name}"
        )
        cmap = LinearColorMapper(palette=list(reversed(Blues256))[40:], low=0, nan_color=(0, 0, 0, 0))
        self.image = self.fig.image(
            image="image", x="x", y="y", dw="dw", dh="dh", source=self.density, color_mapper=cmap,
            global_alpha=0.85, name=f"density:{name}",
        )  # fmt: skip
        self.source = ColumnDataSource({"x": [], "y": [], "row": [], "id": [], "c": []}, name=f"nenya-points:{name}")
        self.points = self.fig.scatter(
            "x", "y", source=self.source, marker="square", size=4, fill_color=fill, line_color=None,
            fill_alpha=0.8, selection_fill_alpha=1.0, selection_line_color=None, nonselection_fill_alpha=0.12,
            name=f"points:{name}",
        )  # fmt: skip
        self.marks = ColumnDataSource({"x": [], "y": [], "kind": []}, name=f"nenya-marks:{name}")
        self.fig.scatter("x", "y", source=self.marks, size=11, fill_color=None, line_color="red", line_width=2)
        wire_view(self.fig, self.points)

    def _figure(self):
        if self.name == "projection":
            return view_figure(
                "projection", "projection", self.c.xlabel, self.c.ylabel,
                backend="canvas", x_range=span(self.px), y_range=span(self.py),
            )  # fmt: skip
        fig = view_figure(
            "map", "map", "longitude", "latitude", backend="canvas",
            x_range=(-180, 180), y_range=(-90, 90), match_aspect=True,
        )  # fmt: skip
        coast = coastlines()
        if coast is not None:
            draw_coastlines(fig, coast)
        return fig

    def refresh(self, keep: np.ndarray, selected: np.ndarray, colours: Any) -> None:
        """Redraw the sample and the density for the viewport, the filters (``keep``) and the selection;
        ``colours(rows)`` gives the colour column's values."""
        x0, x1, y0, y1 = self.box
        rows = self.c.in_rect(self.name, x0, x1, y0, y1, keep)
        shown = self.shown = self.c.sample(rows, self.limit)
        self.source.data = {
            "x": self.px[shown], "y": self.py[shown], "row": shown, "id": self.c.ids[shown].tolist(),
            "c": colours(shown),
        }  # fmt: skip
        self.highlight(selected)
        if len(rows) > len(shown):
            counts = self.c.density(self.name, x0, x1, y0, y1, keep, DENSITY_BINS).astype(np.float64)
            img = np.where(counts > 0, np.log1p(counts), np.nan)
            self.image.glyph.color_mapper.high = float(np.nanmax(img)) if np.isfinite(img).any() else 1.0
            self.density.data = {"image": [img], "x": [x0], "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]}
            self.image.visible = True
        else:
            self.image.visible = False
        self.drawn, self.inside = len(shown), len(rows)

    def highlight(self, selected: np.ndarray) -> None:
        hit = np.flatnonzero(np.isin(self.shown, selected)) if len(selected) else np.zeros(0, np.int64)
        self.source.selected.indices = hit.tolist()

    def move(self, box: tuple[float, float, float, float]) -> None:
        """Show the box (x0, x1, y0, y1); the caller redraws."""
        self.fig.x_range.update(start=box[0], end=box[1])
        self.fig.y_range.update(start=box[2], end=box[3])
        self.box = box

    def centre_on(self, row: int) -> bool:
        """Keep the zoom, centre on a point (False: it has no position in this view)."""
        x, y = float(self.px[row]), float(self.py[row])
        if not (np.isfinite(x) and np.isfinite(y)):
            return False
        hx, hy = (
            (self.fig.x_range.end - self.fig.x_range.start) / 2,
            (self.fig.y_range.end - self.fig.y_range.start) / 2,
        )
        self.move((x - hx, x + hx, y - hy, y + hy))
        return True

    def mark(self, rows: list[int], kinds: list[str], extra: tuple[float, float, str] | None = None) -> None:
        """Ring ``rows`` (and a point that is not in the collection, such as a placed query)."""
        xs, ys = self.px[rows].tolist(), self.py[rows].tolist()
        if extra is not None:
            xs, ys, kinds = [extra[0], *xs], [extra[1], *ys], [extra[2], *kinds]
        self.marks.data = {"x": xs, "y": ys, "kind": kinds}

    def nearest(self, x: float, y: float) -> int | None:
        """The drawn point nearest a click (None: none within 2% of the view)."""
        if not len(self.shown):
            return None
        x0, x1, y0, y1 = self.box
        dx = (self.px[self.shown] - x) / ((x1 - x0) or 1.0)
        dy = (self.py[self.shown] - y) / ((y1 - y0) or 1.0)
        d = dx * dx + dy * dy
        j = int(np.nanargmin(d))
        return int(self.shown[j]) if d[j] < 0.02**2 else None
