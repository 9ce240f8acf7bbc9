"""One browser session of ``nenya serve``: the explorer's document (``explorer/layout.py``) as a Bokeh
server document, with every computation done on the server over the whole collection.

Each view draws a sample of the points in its viewport (at most ``ServeOptions.points``, chosen by a
fixed priority so panning never reshuffles them) over a density image of all of them; zoom in far
enough and every point is drawn. The panel and ``window.nenya`` are the shared ``nenya.js``; its host
script (``serve_host.js``) asks this session through the channel of ``rpc.py`` (a lasso or box
arrives as its geometry and selects over all points), and this module answers with data: the
panels are drawn in the page.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from nenya.analysis.dtbins import DT_bins
from nenya.analysis.explorer.coastlines import coastlines
from nenya.analysis.explorer.data import dt_column, first_colour
from nenya.analysis.explorer.layout import (
    MAX_GALLERY,
    MAX_TABLE,
    colour_mappers,
    draw_coastlines,
    side_panel,
    span,
    view_figure,
    wire_view,
)
from nenya.analysis.serve.rpc import Channel
from nenya.analysis.serve.state import ServeState, give_back_memory

log = logging.getLogger(__name__)

__all__ = ["Session", "MAX_TABLE", "MAX_GALLERY"]

DENSITY_BINS = (320, 240)


class Session:
    """The document of one browser session and its state (filters, selection, viewports)."""

    def __init__(self, state: ServeState, doc) -> None:
        self.state = state
        self.c = state.collection
        self.doc = doc
        self.filters: dict[str, dict] = {}
        self.keep: np.ndarray = np.ones(self.c.n, dtype=bool)
        self.selected: np.ndarray = np.zeros(0, dtype=np.int64)
        self.colour = first_colour(self.c.columns, state.options.colour)
        self.ranges: dict[str, tuple[float, float, float, float]] = {}
        self.shown: dict[str, np.ndarray] = {}
        self.in_view: dict[str, tuple[int, int]] = {}  # per view: points drawn, points in the viewport
        self.mappers = colour_mappers(self.c.columns)
        self.channel = Channel(self)
        self._build()
        for view in self.c.views:
            self.refresh(view)

    # -- building the document ------------------------------------------------------------------
    def _build(self) -> None:
        from bokeh.layouts import column, row

        self.sources: dict[str, Any] = {}
        self.density: dict[str, Any] = {}
        self.marks: dict[str, Any] = {}
        self.figs: dict[str, Any] = {}
        self.points: dict[str, Any] = {}
        self.images: dict[str, Any] = {}
        for view in self.c.views:
            self._build_view(view)
        side = side_panel(self.c.columns, self.colour, dt_column(self.c.columns), DT_bins)
        self.doc.add_root(row(column(*self.figs.values()), column(*side)))
        for model in self.channel.models():
            self.doc.add_root(model)
        self.doc.title = self.state.options.title

    def _build_view(self, view: str) -> None:
        from bokeh.events import RangesUpdate
        from bokeh.models import ColumnDataSource, LinearColorMapper
        from bokeh.palettes import Blues256

        px, py = self.c.xy(view)
        if view == "projection":
            fig = view_figure(
                "projection", "projection", self.c.xlabel, self.c.ylabel,
                backend="canvas", x_range=span(px), y_range=span(py),
            )  # fmt: skip
        else:
            fig = view_figure(
                "map", "map", "longitude", "latitude", backend="canvas",
                x_range=(-180, 180), y_range=(-90, 90), match_aspect=True,
            )  # fmt: skip
            coast = coastlines()
            if coast is not None:
                draw_coastlines(fig, coast)
        self.ranges[view] = (fig.x_range.start, fig.x_range.end, fig.y_range.start, fig.y_range.end)
        dens = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []}, name=f"nenya-density:{view}")
        cmap = LinearColorMapper(palette=list(reversed(Blues256))[40:], low=0, nan_color=(0, 0, 0, 0))
        self.images[view] = fig.image(
            image="image", x="x", y="y", dw="dw", dh="dh", source=dens, color_mapper=cmap,
            global_alpha=0.85, name=f"density:{view}",
        )  # fmt: skip
        src = ColumnDataSource({"x": [], "y": [], "row": [], "id": [], "c": []}, name=f"nenya-points:{view}")
        r = fig.scatter(
            "x", "y", source=src, marker="square", size=4, fill_color=self._colour_spec(), line_color=None,
            fill_alpha=0.8, selection_fill_alpha=1.0, selection_line_color=None, nonselection_fill_alpha=0.12,
            name=f"points:{view}",
        )  # fmt: skip
        marks = ColumnDataSource({"x": [], "y": [], "kind": []}, name=f"nenya-marks:{view}")
        fig.scatter("x", "y", source=marks, size=11, fill_color=None, line_color="red", line_width=2)
        wire_view(fig, r)
        fig.on_event(RangesUpdate, lambda e, v=view: self.on_ranges(v, e))
        self.figs[view], self.sources[view], self.density[view] = fig, src, dens
        self.marks[view], self.points[view] = marks, r

    def _colour_spec(self) -> object:
        if self.colour is None:
            return "#1f77b4"
        return {"field": "c", "transform": self.mappers[self.colour]}

    # -- the views ----------------------------------------------------------------------------------
    def on_ranges(self, view: str, e) -> None:
        self.ranges[view] = (e.x0, e.x1, e.y0, e.y1)
        self.refresh(view)
        self.channel.note()

    def refresh(self, view: str) -> None:
        """Redraw a view's sample and density for its viewport, the filters and the selection."""
        x0, x1, y0, y1 = self.ranges[view]
        rows = self.c.in_rect(view, x0, x1, y0, y1, self.keep)
        shown = self.c.sample(rows, self.state.options.points)
        self.shown[view] = shown
        px, py = self.c.xy(view)
        self.sources[view].data = {
            "x": px[shown], "y": py[shown], "row": shown, "id": self.c.ids[shown].tolist(),
            "c": self._colour_values(shown),
        }  # fmt: skip
        self._highlight(view)
        if len(rows) > len(shown):
            counts = self.c.density(view, x0, x1, y0, y1, self.keep, DENSITY_BINS).astype(np.float64)
            img = np.where(counts > 0, np.log1p(counts), np.nan)
            self.images[view].glyph.color_mapper.high = float(np.nanmax(img)) if np.isfinite(img).any() else 1.0
            self.density[view].data = {"image": [img], "x": [x0], "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]}
            self.images[view].visible = True
        else:
            self.images[view].visible = False
        self.in_view[view] = (len(shown), len(rows))

    def _colour_values(self, rows: np.ndarray) -> list:
        if self.colour is None:
            return [""] * len(rows)
        return self.c.cell(self.colour, rows) if self.c.column(self.colour).kind == "cat" else (
            self.c.values[self.colour][rows]
        )  # fmt: skip

    def _highlight(self, view: str) -> None:
        shown = self.shown.get(view, np.zeros(0, np.int64))
        hit = np.flatnonzero(np.isin(shown, self.selected)) if len(self.selected) else np.zeros(0, np.int64)
        self.sources[view].selected.indices = hit.tolist()

    def note_lines(self) -> list[str]:
        """The note under the title: the collection's size, the filters, what each view draws."""
        n = self.c.n
        lines = [f"{n:,} points"]
        if self.filters:
            lines.append(f"filters ({', '.join(self.filters)}): {int(self.keep.sum()):,} of {n:,} shown")
        for view, (drawn, inside) in self.in_view.items():
            if inside > drawn:
                lines.append(f"{view}: {drawn:,} of the {inside:,} in view drawn, density beneath")
        return lines

    def _move(self, view: str, box: tuple[float, float, float, float]) -> None:
        fig = self.figs[view]
        fig.x_range.update(start=box[0], end=box[1])
        fig.y_range.update(start=box[2], end=box[3])
        self.ranges[view] = box
        self.refresh(view)

    # -- actions: window.nenya's operations (rpc.OPS), the panel drawn from their answers ---------------
    def set_selection(self, rows: np.ndarray) -> int:
        self.selected = np.asarray(rows, dtype=np.int64)
        for view in self.c.views:
            self._highlight(view)
        return len(self.selected)

    def selection(self) -> dict:
        """The panel's data: the count, the first rows' ids and cells, the gallery's rows."""
        first = self.selected[:MAX_TABLE]
        cells = []
        for c in self.c.columns:
            if c.kind == "text":
                cells.append(self.c.table[c.name].iloc[first].astype(str).tolist())
            else:
                cells.append(
                    [v if not isinstance(v, float) or math.isfinite(v) else None for v in self.c.cell(c.name, first)]
                )
        images = self.c.images is not None and self.c.images.kind is not None
        gallery = self.selected[:MAX_GALLERY] if images else self.selected[:0]
        return {
            "count": len(self.selected), "ids": self.c.ids[first].tolist(), "cells": cells,
            "gallery": [[int(r), str(self.c.ids[r])] for r in gallery],
        }  # fmt: skip

    def set_filter(self, name: str, spec: Any, left_open: bool = False) -> int:
        f = None if spec is None else self.c.normalise_filter(name, spec, left_open=left_open)
        if f is None:
            self.c.column(name)  # a KeyError names the columns
            self.filters.pop(name, None)
        else:
            self.filters[name] = f
        return self._refilter()

    def clear_filters(self) -> int:
        self.filters = {}
        return self._refilter()

    def _refilter(self) -> int:
        self.keep = self.c.mask(self.filters)
        if len(self.selected):
            self.selected = self.selected[self.keep[self.selected]]
        for view in self.c.views:
            self.refresh(view)
        return int(self.keep.sum())

    def clear_selection(self) -> int:
        for view in self.c.views:
            self.marks[view].data = {"x": [], "y": [], "kind": []}
        return self.set_selection(np.zeros(0, np.int64))

    def set_colour(self, name: str) -> str:
        c = self.c.column(name)
        if c.kind == "text":
            raise ValueError(f"cannot colour by {name}")
        self.colour = name
        spec = self._colour_spec()
        for view in self.c.views:
            r = self.points[view]
            for g in (r.glyph, r.selection_glyph, r.nonselection_glyph):
                if g is not None and hasattr(g, "fill_color"):
                    g.fill_color = spec
            self.refresh(view)
        return name

    def neighbours(self, row: int, rows: np.ndarray, scores: np.ndarray) -> dict:
        """Ring a point and its neighbours in every view; the panel's data."""
        self._mark_rows([row, *rows.tolist()])
        return {"id": str(self.c.ids[row]), **self.hits(rows, scores)}

    def _mark_rows(self, rows: list[int]) -> None:
        for view in self.c.views:
            px, py = self.c.xy(view)
            kinds = ["point"] + ["neighbour"] * (len(rows) - 1)
            self.marks[view].data = {"x": px[rows].tolist(), "y": py[rows].tolist(), "kind": kinds}

    def hits(self, rows: np.ndarray, scores: np.ndarray) -> dict:
        label = "squared L2" if self.c.index.metric == "l2" else self.c.index.metric
        return {
            "label": f"{label}, over all {self.c.n:,} points",
            "hits": [{"row": int(r), "id": str(self.c.ids[r]), "score": float(s)} for r, s in zip(rows, scores)],
        }

    def nearest(self, view: str, x: float | None, y: float | None) -> str | None:
        """The id of the drawn point nearest a click (None: none within 2% of the view)."""
        rows = self.shown.get(view)
        if rows is None or not len(rows) or x is None or y is None:
            return None
        px, py = self.c.xy(view)
        x0, x1, y0, y1 = self.ranges[view]
        d = ((px[rows] - float(x)) / ((x1 - x0) or 1.0)) ** 2 + ((py[rows] - float(y)) / ((y1 - y0) or 1.0)) ** 2
        j = int(np.nanargmin(d))
        return str(self.c.ids[rows[j]]) if d[j] < 0.02**2 else None

    def find(self, id_: str) -> bool:
        row = self.c.row_of(id_) if id_ else None
        if row is None:
            return False
        for view in self.c.views:
            fig = self.figs[view]
            px, py = self.c.xy(view)
            x, y = float(px[row]), float(py[row])
            if math.isfinite(x) and math.isfinite(y):
                hx = (fig.x_range.end - fig.x_range.start) / 2
                hy = (fig.y_range.end - fig.y_range.start) / 2
                self._move(view, (x - hx, x + hx, y - hy, y + hy))
        return True

    def set_view(self, view: str, x0: float, x1: float, y0: float, y1: float) -> dict:
        """Move a view to a box (the API's pan and zoom) and redraw it."""
        box = tuple(float(v) for v in (x0, x1, y0, y1))
        if not all(math.isfinite(v) for v in box) or box[0] >= box[1] or box[2] >= box[3]:
            raise ValueError("a view box needs finite x0 < x1 and y0 < y1")
        if view not in self.figs:
            raise ValueError(f"unknown view {view!r}; views: {', '.join(self.c.views)}")
        self._move(view, box)  # type: ignore[arg-type]
        drawn, inside = self.in_view[view]
        return {"drawn": drawn, "in_view": inside}

    def show_query(self, token: str) -> dict:
        q = self.state.query(token)
        if q is None:
            raise KeyError(f"no query {token!r} (queries are kept for a while; upload it again)")
        p = q.placement
        if math.isfinite(p.x) and math.isfinite(p.y):
            self.marks["projection"].data = {
                "x": [p.x] + self.c.x[q.rows].tolist(),
                "y": [p.y] + self.c.y[q.rows].tolist(),
                "kind": ["query"] + ["neighbour"] * len(q.rows),
            }
        return {**q.summary(self.c), "image": q.image, "label": self.hits(q.rows, q.scores)["label"]}

    def status(self) -> dict:
        return {"n": self.c.n, "shown": int(self.keep.sum()), "selected": len(self.selected),
                "views": self.c.views, "drawn": {v: int(len(s)) for v, s in self.shown.items()}}  # fmt: skip

    def close(self) -> None:
        """Drop the per-session arrays (the session ended; its document may live on a while)."""
        self.keep = np.zeros(0, dtype=bool)
        self.selected = np.zeros(0, dtype=np.int64)
        self.shown.clear()
        self.filters = {}
        log.info("a browser session ended")
        # its document is dropped once this hook returns: collect and trim a moment later
        from tornado.ioloop import IOLoop

        IOLoop.current().call_later(2.0, give_back_memory)
