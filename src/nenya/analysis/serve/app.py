"""One browser session of ``nenya serve``: the explorer's views, filters and selection panel as a
Bokeh server document, with every computation done on the server over the whole collection.

Each view draws a sample of the points in its viewport (at most ``ServeOptions.points``, chosen by a
fixed priority so panning never reshuffles them) over a density image of all of them; zoom in far
enough and every point is drawn. A lasso or box in a view reaches the server as its geometry and
selects over all points. The page's script (``serve.js``, ``window.nenya``) calls the server through
two data sources that nothing draws (a request in, a reply out); large replies travel as downloads.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from nenya.analysis.dtbins import DT_bins
from nenya.analysis.explorer.coastlines import coastlines
from nenya.analysis.explorer.page import (
    SIDE,
    STYLE,
    colour_mappers,
    draw_coastlines,
    filter_widgets,
    panel_divs,
    selection_table,
    span,
    view_figure,
)
from nenya.analysis.serve.state import ServeState, give_back_memory

if TYPE_CHECKING:
    from nenya.analysis.serve.rpc import Offload

log = logging.getLogger(__name__)

__all__ = ["Session", "MAX_TABLE", "MAX_GALLERY", "INLINE_REPLY"]

MAX_TABLE = 1000
MAX_GALLERY = 32
INLINE_REPLY = 1_000_000  # replies longer than this (characters of JSON) travel as a download
DENSITY_BINS = (320, 240)
SERVE_STYLE = STYLE + "img.g { width: 46px; height: 46px; } .nenya-q { color: #a00; }\n"


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


class Session:
    """The document of one browser session and its state (filters, selection, viewports)."""

    def __init__(self, state: ServeState, doc) -> None:
        self.state = state
        self.c = state.collection
        self.doc = doc
        self.filters: dict[str, dict] = {}
        self.keep: np.ndarray = np.ones(self.c.n, dtype=bool)
        self.selected: np.ndarray = np.zeros(0, dtype=np.int64)
        self.colour = self._first_colour(state.options.colour)
        self.syncing = False
        self.ranges: dict[str, tuple[float, float, float, float]] = {}
        self.shown: dict[str, np.ndarray] = {}
        self.in_view: dict[str, tuple[int, int]] = {}  # per view: points drawn, points in the viewport
        self.mappers = colour_mappers(self.c.columns)
        self._build()
        if self.colour is not None:
            self.set_colour(self.colour)  # the legend, and every view drawn
        else:
            for view in self.c.views:
                self.refresh(view)
        self._update_note()

    # -- building the document ------------------------------------------------------------------
    def _first_colour(self, colour: str | None) -> str | None:
        from nenya.analysis.explorer.data import first_colour

        return first_colour(self.c.columns, colour)

    def _build(self) -> None:
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource, CustomJS

        self.sources: dict[str, Any] = {}
        self.density: dict[str, Any] = {}
        self.marks: dict[str, Any] = {}
        self.figs: dict[str, Any] = {}
        self.points: dict[str, Any] = {}
        self.images: dict[str, Any] = {}
        for view in self.c.views:
            self._build_view(view)
        # the API's channel: two data sources that nothing draws (a text model would be rendered as
        # markup even when hidden, and requests carry ids)
        self.rpc_in = ColumnDataSource({"msg": [""]}, name="nenya-rpc-in")
        self.rpc_in.on_change("data", lambda attr, old, new: self.on_rpc(new["msg"][0]))
        self.rpc_out = ColumnDataSource({"msg": [""]}, name="nenya-rpc-out")
        self.rpc_out.js_on_change("data", CustomJS(code="window.nenya && window.nenya._reply(cb_obj.data.msg[0])"))
        side = self._side()
        layout = row(column(*self.figs.values()), column(*side))
        self.doc.add_root(layout)
        self.doc.add_root(self.rpc_in)
        self.doc.add_root(self.rpc_out)
        self.doc.title = self.state.options.title

    def _build_view(self, view: str) -> None:
        from bokeh.events import RangesUpdate, SelectionGeometry, Tap
        from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
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
        fig.add_tools(HoverTool(renderers=[r], tooltips=self._tooltip(), limit=1))  # one card, not a stack
        fig.on_event(RangesUpdate, lambda e, v=view: self.on_ranges(v, e))
        fig.on_event(SelectionGeometry, lambda e, v=view: self.on_geometry(v, e))
        fig.on_event(Tap, lambda e, v=view: self.on_tap(v, e))
        self.figs[view], self.sources[view], self.density[view] = fig, src, dens
        self.marks[view], self.points[view] = marks, r

    def _tooltip(self) -> str:
        img = ""
        if self.c.images is not None and self.c.images.kind is not None:
            img = '<img src="nenya/thumb/@row.png" style="width:96px;height:96px;image-rendering:pixelated">'
        return f'<div style="max-width:200px">{img}<div>@id</div><div>@c</div></div>'

    def _colour_spec(self) -> object:
        if self.colour is None:
            return "#1f77b4"
        return {"field": "c", "transform": self.mappers[self.colour]}

    def _side(self) -> list:
        from bokeh.layouts import row
        from bokeh.models import Button, Select, TextInput

        names = ["nenya-title", "nenya-note", "nenya-legend", "nenya-selinfo", "nenya-gallery", "nenya-nbrs"]
        self.divs = panel_divs([*names, "nenya-query"], SERVE_STYLE)
        self.divs["nenya-title"].text = f'<h2 style="margin:4px 0">{_esc(self.state.options.title)}</h2>'
        side: list = [self.divs["nenya-title"], self.divs["nenya-note"]]
        usable = [c.name for c in self.c.columns if c.kind != "text"]
        if usable:
            sel = Select(title="colour by", options=usable, value=self.colour or usable[0], name="nenya-colour")
            sel.on_change("value", lambda a, o, n: self.guard(self.set_colour, n))
            side += [sel, self.divs["nenya-legend"]]
        find = TextInput(title="find an id", placeholder="id, then Enter", name="nenya-find", width=SIDE - 20)
        find.on_change("value", lambda a, o, n: self.guard(self.find, n.strip()))
        side.append(find)
        self.dt_column = next((c for c in ("DT40", "DT") if any(x.name == c for x in self.c.columns)), None)
        if self.dt_column is not None:
            dt = Select(title=f"Nenya DT bin ({self.dt_column})", options=list(DT_bins), value="all", name="nenya-dt")
            dt.on_change("value", lambda a, o, n: self.guard(self.set_dt, n))
            side.append(dt)
        self.filter_ws = filter_widgets(
            self.c.columns, lambda w, prop: w.on_change(prop, lambda a, o, n, w=w: self.guard(self.on_filter_widget, w))
        )
        side += self.filter_ws
        buttons = []
        for label, name, fn in (("Clear filters", "nenya-clear-filters", self.clear_filters),
                                ("Clear selection", "nenya-clear-selection", self.clear_selection),
                                ("Export CSV", "nenya-export", self.export_button)):  # fmt: skip
            b = Button(label=label, name=name, width=130, button_type="primary" if "export" in name else "default")
            b.on_event("button_click", lambda e, fn=fn: self.guard(fn))
            buttons.append(b)
        table, self.table_src = selection_table(self.c.columns)
        side += [row(*buttons), self.divs["nenya-selinfo"], self.divs["nenya-gallery"], table]
        side += [self.divs["nenya-nbrs"], self.divs["nenya-query"]]
        return side

    # -- callbacks ----------------------------------------------------------------------------------
    def guard(self, fn, *args) -> Any:
        """Run a UI callback unless the server itself is setting widgets; log (not raise) errors."""
        if self.syncing:
            return None
        try:
            return fn(*args)
        except (ValueError, KeyError) as e:
            self.divs["nenya-note"].text = self._note_text() + f"<br><b>{_esc(e)}</b>"
            return None

    def on_ranges(self, view: str, e) -> None:
        self.ranges[view] = (e.x0, e.x1, e.y0, e.y1)
        self.refresh(view)

    def on_geometry(self, view: str, e) -> None:
        if not e.final:
            return
        g = e.geometry
        if g.get("type") == "rect":
            self.set_selection(self.c.in_rect(view, g["x0"], g["x1"], g["y0"], g["y1"], self.keep))
        elif g.get("type") == "poly":
            self.set_selection(self.c.in_polygon(view, g["x"], g["y"], self.keep))

    def on_tap(self, view: str, e) -> None:
        rows = self.shown.get(view)
        if rows is None or not len(rows) or e.x is None:
            return
        px, py = self.c.xy(view)
        x0, x1, y0, y1 = self.ranges[view]
        dx = (px[rows] - e.x) / ((x1 - x0) or 1.0)
        dy = (py[rows] - e.y) / ((y1 - y0) or 1.0)
        d = dx * dx + dy * dy
        j = int(np.nanargmin(d))
        if d[j] < 0.02**2:
            self.show_neighbours(int(rows[j]))

    def on_filter_widget(self, w) -> None:
        i = int(w.name.split(":c")[1])
        c = self.c.columns[i]
        if c.kind == "cat":
            spec: dict[str, Any] | None = {"values": [str(v) for v in w.value]} if w.value else None
        else:
            v = w.value_throttled if w.value_throttled is not None else w.value
            whole = v[0] <= w.start and v[1] >= w.end
            spec = None if whole else {"range": [float(v[0]), float(v[1])], "left_open": False}
        self._apply_filter(c.name, spec)

    # -- the state ----------------------------------------------------------------------------------
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
        self._update_note()

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

    def _note_text(self) -> str:
        n = self.c.n
        shown = int(self.keep.sum())
        parts = [f"{n:,} points"]
        if self.filters:
            parts.append(f"filters ({_esc(', '.join(self.filters))}): {shown:,} of {n:,} shown")
        for view, (drawn, inside) in self.in_view.items():
            if inside > drawn:
                parts.append(f"{view}: {drawn:,} of the {inside:,} in view drawn, density beneath")
        return "<br>".join(parts)

    def _update_note(self) -> None:
        self.divs["nenya-note"].text = self._note_text()

    def _apply_filter(self, name: str, spec: dict | None) -> int:
        if spec is None:
            self.filters.pop(name, None)
        else:
            self.filters[name] = spec
        return self._refilter()

    def _refilter(self) -> int:
        self.keep = self.c.mask(self.filters)
        if len(self.selected):
            self.selected = self.selected[self.keep[self.selected]]
        for view in self.c.views:
            self.refresh(view)
        self._panel()
        return int(self.keep.sum())

    def set_selection(self, rows: np.ndarray) -> int:
        self.selected = np.asarray(rows, dtype=np.int64)
        for view in self.c.views:
            self._highlight(view)
        self._panel()
        return len(self.selected)

    def _panel(self) -> None:
        """The selection panel: count, gallery, the first rows in the table."""
        rows = self.selected
        info = f"<h3>{len(rows):,} selected</h3>"
        if len(rows) > MAX_TABLE:
            info += f'<span class="nenya-note">the table lists the first {MAX_TABLE}; Export CSV has all</span>'
        self.divs["nenya-selinfo"].text = info
        self.divs["nenya-gallery"].text = "".join(self._img(r) for r in rows[:MAX_GALLERY])
        first = rows[:MAX_TABLE]
        data: dict[str, list] = {"id": self.c.ids[first].tolist()}
        for i, c in enumerate(self.c.columns):
            data[f"c{i}"] = self.c.cell(c.name, first) if c.kind != "text" else (
                self.c.table[c.name].iloc[first].astype(str).tolist()
            )  # fmt: skip
        self.table_src.data = data

    def _img(self, row: int, cls: str = "g") -> str:
        if self.c.images is None or self.c.images.kind is None:
            return ""
        return f'<img class="{cls}" src="nenya/thumb/{int(row)}.png" title="{_esc(self.c.ids[row])}">'

    # -- actions (the UI and the API) -----------------------------------------------------------------
    def set_filter(self, name: str, spec: Any, left_open: bool = False) -> int:
        f = None if spec is None else self.c.normalise_filter(name, spec, left_open=left_open)
        if f is None:
            self.c.column(name)
        n = self._apply_filter(name, f)
        self._sync_widget(name)
        return n

    def _sync_widget(self, name: str) -> None:
        i = next(j for j, c in enumerate(self.c.columns) if c.name == name)
        w = next((w for w in self.filter_ws if w.name == f"filter:c{i}"), None)
        if w is None:
            return
        f = self.filters.get(name)
        self.syncing = True
        try:
            if self.c.columns[i].kind == "cat":
                w.value = list(f["values"]) if f else []
            else:
                w.value = (max(f["range"][0], w.start), min(f["range"][1], w.end)) if f else (w.start, w.end)
        finally:
            self.syncing = False

    def clear_filters(self) -> int:
        names = list(self.filters)
        self.filters = {}
        for name in names:
            self._sync_widget(name)
        dt = self.doc.get_model_by_name("nenya-dt")
        if dt is not None:
            self.syncing = True
            dt.value = "all"
            self.syncing = False
        return self._refilter()

    def clear_selection(self) -> int:
        for view in self.c.views:
            self.marks[view].data = {"x": [], "y": [], "kind": []}
        return self.set_selection(np.zeros(0, np.int64))

    def set_dt(self, key: str) -> int:
        assert self.dt_column is not None  # the DT pick list exists only with a DT column
        if key == "all":
            return self.set_filter(self.dt_column, None)
        lo, hi = DT_bins[key]
        return self.set_filter(self.dt_column, [lo, hi], left_open=True)

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
        if c.kind == "cat":
            m = self.mappers[name]
            pal = m.palette  # type: ignore[attr-defined]
            self.divs["nenya-legend"].text = " ".join(
                f'<span class="nenya-swatch" style="background:{_esc(pal[k % len(pal)])}"></span>{_esc(v)}'
                for k, v in enumerate(c.levels)
            )
        else:
            self.divs["nenya-legend"].text = f"{_esc(c.name)}: {_esc(c.lo)} .. {_esc(c.hi)}"
        w = self.doc.get_model_by_name("nenya-colour")
        if w is not None and w.value != name:
            self.syncing = True
            w.value = name
            self.syncing = False
        return name

    def export_button(self) -> None:
        from nenya.analysis.serve.rpc import Offload, export

        off = export(self, {})
        self._offload(None, "export", Offload(off.work, lambda r: self._send(json.dumps({"download": r["url"]}))))

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

    def status(self) -> dict:
        return {"n": self.c.n, "shown": int(self.keep.sum()), "selected": len(self.selected),
                "views": self.c.views, "drawn": {v: int(len(s)) for v, s in self.shown.items()}}  # fmt: skip

    def show_neighbours(self, row: int, rows: np.ndarray | None = None, scores: np.ndarray | None = None) -> list[str]:
        if rows is None or scores is None:
            rows, scores = self.c.neighbours_of_row(row, self.state.options.k)
        self._mark_rows([row, *rows.tolist()])
        self.divs["nenya-nbrs"].text = f"<h3>neighbours of {_esc(self.c.ids[row])}</h3>" + self._hits(rows, scores)
        return [str(self.c.ids[r]) for r in rows]

    def _mark_rows(self, rows: list[int]) -> None:
        for view in self.c.views:
            px, py = self.c.xy(view)
            kinds = ["point"] + ["neighbour"] * (len(rows) - 1)
            self.marks[view].data = {"x": px[rows].tolist(), "y": py[rows].tolist(), "kind": kinds}

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> str:
        label = "squared L2" if self.c.index.metric == "l2" else self.c.index.metric
        items = [
            f'<div>{self._img(int(r), "n")} {_esc(self.c.ids[r])} <span class="nenya-note">{s:.4g}</span></div>'
            for r, s in zip(rows, scores)
        ]
        return f'<div class="nenya-note">{_esc(label)}, over all {self.c.n:,} points</div>' + "".join(items)

    def find(self, id_: str) -> bool:
        if not id_:
            return False
        row = self.c.row_of(id_)
        if row is None:
            self.divs["nenya-note"].text = self._note_text() + f"<br>no id {_esc(id_)} in this collection"
            return False
        for view in self.c.views:
            fig = self.figs[view]
            px, py = self.c.xy(view)
            x, y = float(px[row]), float(py[row])
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            hx = (fig.x_range.end - fig.x_range.start) / 2
            hy = (fig.y_range.end - fig.y_range.start) / 2
            fig.x_range.update(start=x - hx, end=x + hx)
            fig.y_range.update(start=y - hy, end=y + hy)
            self.ranges[view] = (x - hx, x + hx, y - hy, y + hy)
            self.refresh(view)
        self.show_neighbours(row)
        return True

    def set_view(self, view: str, x0: float, x1: float, y0: float, y1: float) -> dict:
        """Move a view to a box (the API's pan and zoom) and redraw it."""
        box = [float(v) for v in (x0, x1, y0, y1)]
        if not all(math.isfinite(v) for v in box) or box[0] >= box[1] or box[2] >= box[3]:
            raise ValueError("a view box needs finite x0 < x1 and y0 < y1")
        fig = self.figs.get(view)
        if fig is None:
            raise ValueError(f"unknown view {view!r}; views: {', '.join(self.c.views)}")
        fig.x_range.update(start=box[0], end=box[1])
        fig.y_range.update(start=box[2], end=box[3])
        self.ranges[view] = (box[0], box[1], box[2], box[3])
        self.refresh(view)
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
        how = (
            "UMAP transform of the fitted model" if p.method == "umap-transform" else "mean position of its neighbours"
        )
        pic = f'<img class="p" src="{q.image}">' if q.image.startswith("data:image/") else ""
        self.divs["nenya-query"].text = (
            f"<h3>query {_esc(q.name)}</h3>{pic}"
            f'<div class="nenya-q">placed by the {_esc(how)}</div>' + self._hits(q.rows, q.scores)
        )
        return q.summary(self.c)

    # -- the scripting API --------------------------------------------------------------------------
    def on_rpc(self, text: str) -> None:
        """Answer one request of ``window.nenya``: ``{"id", "op", "args"}`` -> ``{"id", "ok", ...}``.

        Runs on the event loop under the document lock. An operation either answers at once, or
        returns :class:`Offload`: its work then runs in the server's worker pool, off the loop (other
        sessions and thumbnails go on meanwhile), and its ``then`` back under the lock."""
        try:
            msg = json.loads(text)
            rid = msg["id"]
        except (ValueError, KeyError, TypeError):
            return
        op = str(msg.get("op"))
        try:
            from nenya.analysis.serve.rpc import OPS

            fn = OPS.get(op)
            if fn is None:
                raise ValueError(f"unknown request {op!r}")
            out = fn(self, msg.get("args") or {})
        except Exception as e:  # every failure is answered, and the server keeps serving
            return self._fail(rid, op, e)
        from nenya.analysis.serve.rpc import Offload

        if isinstance(out, Offload):
            self._offload(rid, op, out)
        else:
            self._send(self._reply(rid, out))

    def _offload(self, rid: Any, op: str, off: Offload) -> None:
        import asyncio
        import functools

        from nenya.analysis.serve.work import Busy

        # with no ``then``, the worker also encodes the reply (a long list of ids: seconds of JSON at 1M)
        work = off.work if off.then is not None else (lambda: self._reply(rid, off.work()))
        try:
            future = asyncio.wrap_future(self.state.work.submit(work))
        except (Busy, RuntimeError) as e:
            return self._fail(rid, op, e)

        def done(f: asyncio.Future) -> None:  # on the loop, without the lock: hand back under it
            if f.cancelled():
                return
            e = f.exception()
            if e is not None:
                cb = functools.partial(self._fail, rid, op, e)
            elif off.then is None:
                cb = functools.partial(self._send, f.result())  # the reply, encoded by the worker
            else:
                cb = functools.partial(self._then, rid, op, off.then, f.result())
            self.doc.add_next_tick_callback(cb)

        future.add_done_callback(done)

    def _then(self, rid: Any, op: str, then: Callable[[Any], Any], data: Any) -> None:
        try:
            result = then(data)
            if rid is not None:  # None: the UI's own request (the export button), answered by then()
                self._send(self._reply(rid, result))
        except Exception as e:
            self._fail(rid, op, e)

    def _reply(self, rid: Any, result: Any) -> str:
        """The reply's JSON; a long one is written to a file and offered as a download."""
        body = json.dumps({"id": rid, "ok": True, "result": result}, allow_nan=False)
        if len(body) <= INLINE_REPLY:
            return body
        path = self.state.new_file(".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f)
        url = self.state.offer(path, "reply.json", "application/json")
        return json.dumps({"id": rid, "ok": True, "url": url, "json": True})

    def _fail(self, rid: Any, op: str, e: BaseException) -> None:
        if not isinstance(e, (ValueError, KeyError, TypeError, RuntimeError)):
            log.error("request %s failed", op, exc_info=e)
        self._send(json.dumps({"id": rid, "ok": False, "error": str(e).strip("'\"")}))

    def _send(self, text: str) -> None:
        self.rpc_out.data = {"msg": [text]}
