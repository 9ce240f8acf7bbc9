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
from nenya.analysis.explorer.data import dt_column, first_colour
from nenya.analysis.explorer.layout import MAX_GALLERY, MAX_TABLE, colour_mappers, side_panel
from nenya.analysis.serve.rpc import Channel
from nenya.analysis.serve.state import ServeState, give_back_memory
from nenya.analysis.serve.views import ServedView

log = logging.getLogger(__name__)

__all__ = ["Session", "MAX_TABLE", "MAX_GALLERY"]


class Session:
    """The document of one browser session and its state (filters, selection, viewports)."""

    def __init__(self, state: ServeState, doc) -> None:
        from bokeh.events import RangesUpdate
        from bokeh.layouts import column, row

        self.state = state
        self.c = state.collection
        self.doc = doc
        self.filters: dict[str, dict] = {}
        self.keep: np.ndarray = np.ones(self.c.n, dtype=bool)
        self.selected: np.ndarray = np.zeros(0, dtype=np.int64)
        self.shown_counts: tuple[np.ndarray, dict] | None = None  # (the mask they count, the charts' counts)
        self.colour = first_colour(self.c.columns, state.options.colour)
        self.mappers = colour_mappers(self.c.columns)
        self.channel = Channel(self)
        self.views = {v: ServedView(self.c, v, self._colour_spec(), state.options.points) for v in self.c.views}
        for name, view in self.views.items():
            view.fig.on_event(RangesUpdate, lambda e, v=name: self.on_ranges(v, e))
        side = side_panel(self.c.columns, self.colour, dt_column(self.c.columns), DT_bins)
        doc.add_root(row(column(*[v.fig for v in self.views.values()]), column(*side)))
        for model in self.channel.models():
            doc.add_root(model)
        doc.title = state.options.title
        for name in self.views:
            self.refresh(name)

    def _colour_spec(self) -> object:
        if self.colour is None:
            return "#1f77b4"
        return {"field": "c", "transform": self.mappers[self.colour]}

    def _colour_values(self, rows: np.ndarray) -> Any:
        if self.colour is None:
            return [""] * len(rows)
        if self.c.column(self.colour).kind == "cat":
            return self.c.cell(self.colour, rows)
        return self.c.values[self.colour][rows]

    # -- the views ----------------------------------------------------------------------------------
    def on_ranges(self, view: str, e) -> None:
        self.views[view].box = (e.x0, e.x1, e.y0, e.y1)
        self.refresh(view)
        self.channel.note()

    def refresh(self, view: str) -> None:
        """Redraw a view's sample and density for its viewport, the filters and the selection."""
        self.views[view].refresh(self.keep, self.selected, self._colour_values)

    def note_lines(self) -> list[str]:
        """The note under the title: the collection's size, the filters, what each view draws."""
        n = self.c.n
        lines = [f"{n:,} points"]
        if self.filters:
            lines.append(f"filters ({', '.join(self.filters)}): {int(self.keep.sum()):,} of {n:,} shown")
        for name, v in self.views.items():
            if v.inside > v.drawn:
                lines.append(f"{name}: {v.drawn:,} of the {v.inside:,} in view drawn, density beneath")
        return lines

    # -- actions: window.nenya's operations (rpc.OPS), the panel drawn from their answers ---------------
    def set_selection(self, rows: np.ndarray) -> int:
        self.selected = np.asarray(rows, dtype=np.int64)
        for view in self.views.values():
            view.highlight(self.selected)
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
        for view in self.views:
            self.refresh(view)
        return int(self.keep.sum())

    def clear_selection(self) -> int:
        for view in self.views.values():
            view.mark([], [])
        return self.set_selection(np.zeros(0, np.int64))

    def set_colour(self, name: str) -> str:
        c = self.c.column(name)
        if c.kind == "text":
            raise ValueError(f"cannot colour by {name}")
        self.colour = name
        spec = self._colour_spec()
        for name, view in self.views.items():
            r = view.points
            for g in (r.glyph, r.selection_glyph, r.nonselection_glyph):
                if g is not None and hasattr(g, "fill_color"):
                    g.fill_color = spec
            self.refresh(name)
        return name

    def neighbours(self, row: int, rows: np.ndarray, scores: np.ndarray) -> dict:
        """Ring a point and its neighbours in every view; the panel's data."""
        for view in self.views.values():
            view.mark([row, *rows.tolist()], ["point"] + ["neighbour"] * len(rows))
        return {"id": str(self.c.ids[row]), **self.hits(rows, scores)}

    def hits(self, rows: np.ndarray, scores: np.ndarray) -> dict:
        label = "squared L2" if self.c.index.metric == "l2" else self.c.index.metric
        return {
            "label": f"{label}, over all {self.c.n:,} points",
            "hits": [{"row": int(r), "id": str(self.c.ids[r]), "score": float(s)} for r, s in zip(rows, scores)],
        }

    def nearest(self, view: str, x: float | None, y: float | None) -> str | None:
        """The id of the drawn point nearest a click (None: none within 2% of the view)."""
        v = self.views.get(view)
        row = None if v is None or x is None or y is None else v.nearest(float(x), float(y))
        return None if row is None else str(self.c.ids[row])

    def find(self, id_: str) -> bool:
        row = self.c.row_of(id_) if id_ else None
        if row is None:
            return False
        for name, view in self.views.items():
            if view.centre_on(row):
                self.refresh(name)
        return True

    def set_view(self, view: str, x0: float, x1: float, y0: float, y1: float) -> dict:
        """Move a view to a box (the API's pan and zoom) and redraw it."""
        box = (float(x0), float(x1), float(y0), float(y1))
        if not all(math.isfinite(v) for v in box) or box[0] >= box[1] or box[2] >= box[3]:
            raise ValueError("a view box needs finite x0 < x1 and y0 < y1")
        if view not in self.views:
            raise ValueError(f"unknown view {view!r}; views: {', '.join(self.c.views)}")
        self.views[view].move(box)
        self.refresh(view)
        return {"drawn": self.views[view].drawn, "in_view": self.views[view].inside}

    def show_query(self, token: str) -> dict:
        q = self.state.query(token)
        if q is None:
            raise KeyError(f"no query {token!r} (queries are kept for a while; upload it again)")
        p = q.placement
        if math.isfinite(p.x) and math.isfinite(p.y):
            self.views["projection"].mark(q.rows.tolist(), ["neighbour"] * len(q.rows), extra=(p.x, p.y, "query"))
        return {**q.summary(self.c), "image": q.image, "label": self.hits(q.rows, q.scores)["label"]}

    def status(self) -> dict:
        return {"n": self.c.n, "shown": int(self.keep.sum()), "selected": len(self.selected),
                "views": self.c.views, "drawn": {n: v.drawn for n, v in self.views.items()}}  # fmt: skip

    def close(self) -> None:
        """Drop the per-session arrays (the session ended; its document may live on a while)."""
        self.keep = np.zeros(0, dtype=bool)
        self.selected = np.zeros(0, dtype=np.int64)
        self.shown_counts = None
        for view in self.views.values():
            view.shown = np.zeros(0, np.int64)
        self.filters = {}
        log.info("a browser session ended")
        # its document is dropped once this hook returns: collect and trim a moment later
        from tornado.ioloop import IOLoop

        IOLoop.current().call_later(2.0, give_back_memory)
