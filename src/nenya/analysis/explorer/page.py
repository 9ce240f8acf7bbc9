"""The explorer page as Bokeh models: linked projection and map views, filters, the selection panel.

Both views draw the same ``ColumnDataSource`` through views that share one ``BooleanFilter``, so a
selection or a filter is the same in both by construction. Every widget calls into the page's own
script (``explorer.js``, which also defines ``window.nenya``), so the buttons and the scripting API
run the same code. The page is one file: BokehJS inline, data in the document, a
Content-Security-Policy that forbids fetching anything.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from nenya.analysis.explorer.data import Column

CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'"
)
STYLE = """
h3 { margin: 6px 0 2px 0; font: bold 13px sans-serif; }
.nenya-note { color: #555; font: 12px sans-serif; }
img.g, img.n, img.p { image-rendering: pixelated; }
img.g { width: 46px; height: 46px; margin: 1px; border: 1px solid #ccc; }
img.n { width: 44px; height: 44px; vertical-align: middle; margin: 1px; }
img.p { width: 128px; height: 128px; border: 1px solid #999; }
.nenya-swatch { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 8px; }
"""
MAX_TABLE = 1000
BACKEND = "webgl"
MARKER = "square"
MAX_GALLERY = 32
SIDE = 430


@dataclass
class PageData:
    """Everything the page shows (rows are the shown points)."""

    title: str
    note: str
    x: np.ndarray
    y: np.ndarray
    xlabel: str
    ylabel: str
    ids: list[str]
    columns: list[Column]
    colour: str | None
    lonlat: tuple[np.ndarray, np.ndarray] | None
    coast: tuple[list[np.ndarray], list[np.ndarray]] | None
    nbr: np.ndarray
    nbr_score: np.ndarray
    metric: str
    thumbs: list[str]
    thumb_rows: np.ndarray
    dt_column: str | None
    dt_bins: dict[str, tuple[float, float]]


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _palette(n: int) -> list[str]:
    import matplotlib
    from matplotlib.colors import to_hex

    tab = matplotlib.colormaps["tab20"](np.arange(20))
    tab = np.concatenate([tab[0::2], tab[1::2]])  # the ten strong colours first
    return [to_hex(tab[i % 20]) for i in range(max(n, 1))]


def colour_mappers(cols: list[Column]) -> dict[str, object]:
    from bokeh.models import CategoricalColorMapper, LinearColorMapper
    from bokeh.palettes import Viridis256

    out: dict[str, object] = {}
    for i, c in enumerate(cols):
        if c.kind in ("num", "date"):
            lo = c.lo if c.lo is not None else 0.0
            hi = c.hi if c.hi is not None and c.hi > lo else lo + 1.0
            out[c.name] = LinearColorMapper(palette=Viridis256, low=lo, high=hi, nan_color="#bbbbbb", name=f"cmap:c{i}")
        elif c.kind == "cat":
            out[c.name] = CategoricalColorMapper(
                factors=c.levels, palette=_palette(len(c.levels)), nan_color="#bbbbbb", name=f"cmap:c{i}"
            )
    return out


def _source_data(d: PageData) -> dict:
    data: dict = {"x": d.x.astype(np.float64), "y": d.y.astype(np.float64), "id": d.ids}
    if d.lonlat is not None:
        data["lon"], data["lat"] = (a.astype(np.float64) for a in d.lonlat)
    for i, c in enumerate(d.columns):
        data[f"c{i}"] = c.values
    return data


def _scatter(fig, source, view, colour_spec, name: str, xf: str, yf: str):
    return fig.scatter(
        xf,
        yf,
        source=source,
        view=view,
        marker=MARKER,
        size=4,
        fill_color=colour_spec,
        line_color=None,
        fill_alpha=0.8,
        selection_fill_alpha=1.0,
        selection_line_color=None,
        nonselection_fill_alpha=0.12,
        name=name,
    )


def view_figure(name: str, title: str, xlabel: str, ylabel: str, *, backend: str = BACKEND, **kw):
    from bokeh.plotting import figure

    fig = figure(
        name=name,
        title=title,
        output_backend=backend,
        tools="pan,wheel_zoom,box_zoom,box_select,lasso_select,reset",
        active_scroll="wheel_zoom",
        active_drag="lasso_select",
        width=680,
        height=500 if name == "projection" else 380,
        x_axis_label=xlabel,
        y_axis_label=ylabel,
        **kw,
    )
    fig.toolbar.logo = None
    return fig


def span(v: np.ndarray) -> tuple[float, float]:
    """A fixed range around the finite values, 4% padding (fixed, so that find and the API can move it)."""
    f = v[np.isfinite(v)]
    lo, hi = (float(f.min()), float(f.max())) if len(f) else (0.0, 1.0)
    pad = 0.04 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def draw_coastlines(fig, coast: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    """Coastlines (longitude and latitude polylines) under a map's points."""
    lons, lats = coast
    fig.multi_line(
        xs=[a.astype(np.float64) for a in lons],
        ys=[a.astype(np.float64) for a in lats],
        line_color="#777777",
        line_width=1,
        name="coastlines",
    )


def _views(d: PageData, source, filt, colour_spec) -> list:
    from bokeh.models import CDSView, ColumnDataSource, CustomJS, HoverTool

    figs = []
    marks = ColumnDataSource({"x": [], "y": [], "lon": [], "lat": [], "kind": []}, name="nenya-marks")
    proj = view_figure("projection", "projection", d.xlabel, d.ylabel, x_range=span(d.x), y_range=span(d.y))
    figs.append((proj, "x", "y"))
    if d.lonlat is not None:
        mp = view_figure(
            "map", "map", "longitude", "latitude", x_range=(-180, 180), y_range=(-90, 90), match_aspect=True
        )
        if d.coast is not None:
            draw_coastlines(mp, d.coast)
        figs.append((mp, "lon", "lat"))
    for fig, xf, yf in figs:
        r = _scatter(fig, source, CDSView(filter=filt), colour_spec, f"points:{fig.name}", xf, yf)
        fig.scatter(
            "x" if xf == "x" else "lon",
            "y" if yf == "y" else "lat",
            source=marks,
            size=11,
            fill_color=None,
            line_color="red",
            line_width=2,
            name=f"marks:{fig.name}",
        )
        fig.add_tools(
            HoverTool(
                renderers=[r],
                tooltips=None,  # the page's own card next to the pointer: image, id (as text)
                callback=CustomJS(code=f"window.nenya && window.nenya._hover(cb_data, {json.dumps(fig.name)})"),
            )
        )
        fig.js_on_event("tap", CustomJS(code=f"window.nenya && window.nenya._tap(cb_obj, {json.dumps(fig.name)})"))
    return [f for f, _, _ in figs]


def filter_widgets(cols: list[Column], attach) -> list:
    """A pick list per category and a range slider per number or date column (named ``filter:c<i>``);
    ``attach(widget, property)`` connects each to whatever reacts (the page's script, or the server)."""
    from bokeh.models import DatetimeRangeSlider, MultiChoice, RangeSlider

    out = []
    for i, c in enumerate(cols):
        if not c.filters or (c.kind != "cat" and c.lo is None):  # nothing to filter, or no finite value
            continue
        name = f"filter:c{i}"
        if c.kind == "cat":
            w = MultiChoice(title=c.name, options=c.levels, value=[], placeholder="all", name=name, width=SIDE - 20)
            attach(w, "value")
        else:
            lo, hi = float(c.lo or 0.0), float(c.hi if c.hi is not None else 0.0)
            hi = hi if hi > lo else lo + 1.0
            cls = DatetimeRangeSlider if c.kind == "date" else RangeSlider
            extra = {} if c.kind == "date" else {"step": (hi - lo) / 1000}
            w = cls(title=c.name, start=lo, end=hi, value=(lo, hi), name=name, width=SIDE - 20, **extra)
            attach(w, "value_throttled")
        out.append(w)
    return out


def panel_divs(names: list[str], css: str) -> dict:
    """The side panel's text boxes, by name, sharing one style sheet."""
    from bokeh.models import Div, InlineStyleSheet

    sheet = InlineStyleSheet(css=css)
    return {n: Div(text="", name=n, width=SIDE, stylesheets=[sheet]) for n in names}


def selection_table(cols: list[Column]) -> tuple:
    """``(table, source)``: the selection's rows (``nenya-table``), ids shown as text."""
    from bokeh.models import ColumnDataSource, DataTable, StringFormatter, TableColumn

    source = ColumnDataSource({"id": []} | {f"c{i}": [] for i in range(len(cols))}, name="nenya-table-source")
    columns = [TableColumn(field="id", title="id", formatter=StringFormatter())] + [
        TableColumn(field=f"c{i}", title=c.name) for i, c in enumerate(cols)
    ]
    table = DataTable(
        source=source, columns=columns, width=SIDE, height=220, name="nenya-table", index_position=None,
        reorderable=False,
    )  # fmt: skip
    return table, source


def _side(d: PageData, source, call) -> list:
    from bokeh.layouts import row
    from bokeh.models import Button, Select, TextInput

    div = panel_divs(
        ["nenya-title", "nenya-note", "nenya-legend", "nenya-selinfo", "nenya-gallery", "nenya-nbrs", "nenya-preview"],
        STYLE,
    )
    usable = [c.name for c in d.columns if c.kind != "text"]
    side: list = [div["nenya-title"], div["nenya-note"]]
    if usable:
        colour = Select(title="colour by", options=usable, value=d.colour or usable[0], name="nenya-colour")
        colour.js_on_change("value", call("colour"))
        side += [colour, div["nenya-legend"]]
    find = TextInput(title="find an id", placeholder="id, then Enter", name="nenya-find", width=SIDE - 20)
    find.js_on_change("value", call("find"))
    side.append(find)
    if d.dt_column is not None:
        dt = Select(title=f"Nenya DT bin ({d.dt_column})", options=list(d.dt_bins), value="all", name="nenya-dt")
        dt.js_on_change("value", call("dt"))
        side.append(dt)
    side += filter_widgets(d.columns, lambda w, prop: w.js_on_change(prop, call("filter")))
    clear_f = Button(label="Clear filters", name="nenya-clear-filters", width=130)
    clear_f.js_on_event("button_click", call("clearFilters"))
    clear_s = Button(label="Clear selection", name="nenya-clear-selection", width=130)
    clear_s.js_on_event("button_click", call("clearSelection"))
    export = Button(label="Export CSV", button_type="primary", name="nenya-export", width=130)
    export.js_on_event("button_click", call("export"))
    table, _ = selection_table(d.columns)
    side += [row(clear_f, clear_s, export), div["nenya-selinfo"], div["nenya-gallery"], table]
    side += [div["nenya-nbrs"], div["nenya-preview"]]
    return side


def _script_data(d: PageData, views: list[str]) -> dict:
    def finite(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    return {
        "n": len(d.ids),
        "title": d.title,
        "note": d.note,
        "views": views,
        "columns": [c.spec(f"c{i}") for i, c in enumerate(d.columns)],
        "colour": d.colour,
        "k": int(d.nbr.shape[1]) if d.nbr.ndim == 2 else 0,
        "metric": d.metric,
        "nbr": _b64(d.nbr.astype(np.int32)),
        "nbr_score": _b64(d.nbr_score.astype(np.float32)),
        "thumbs": d.thumbs,
        "thumb_rows": [int(r) for r in d.thumb_rows],
        "dt_column": d.dt_column,
        "dt_bins": {k: [finite(a), finite(b)] for k, (a, b) in d.dt_bins.items()},
        "max_table": MAX_TABLE,
        "max_gallery": MAX_GALLERY,
    }


def json_in_html(obj: dict) -> str:
    """JSON inside a <script> element: nothing in it can end the element or start markup."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def build_page(d: PageData) -> str:
    """The whole HTML page."""
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models import BooleanFilter, ColorBar, ColumnDataSource, CustomJS
    from bokeh.resources import INLINE

    source = ColumnDataSource(_source_data(d), name="nenya-points")
    source.selected.js_on_change("indices", CustomJS(code="window.nenya && window.nenya._onSelect()"))
    filt = BooleanFilter(booleans=np.ones(len(d.ids), dtype=bool), name="nenya-filter")
    mappers = colour_mappers(d.columns)
    field_of = {c.name: f"c{i}" for i, c in enumerate(d.columns)}
    if d.colour is not None:
        colour_spec: object = {"field": field_of[d.colour], "transform": mappers[d.colour]}
    else:
        colour_spec = "#1f77b4"

    def call(action: str) -> CustomJS:
        return CustomJS(code=f"window.nenya && window.nenya._ui({json.dumps(action)}, cb_obj)")

    figs = _views(d, source, filt, colour_spec)
    first_num = next((m for c, m in mappers.items() if type(m).__name__ == "LinearColorMapper"), None)
    if first_num is not None:
        bar = ColorBar(color_mapper=first_num, name="nenya-colorbar", width=12, visible=False)
        figs[0].add_layout(bar, "right")
    layout = row(column(*figs), column(*_side(d, source, call)))
    # every colour mapper must be in the document for the script to find it by name
    holder = ColumnDataSource({"m": []}, name="nenya-mappers", tags=list(mappers.values()))
    page = file_html([layout, holder], INLINE, d.title)
    script = resources.files("nenya.analysis.explorer").joinpath("explorer.js").read_text(encoding="utf-8")
    head = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
    at = page.index('<meta charset="utf-8">') + len('<meta charset="utf-8">')  # in <head>, before any script
    page = page[:at] + "\n" + head + page[at:]
    blob = json_in_html(_script_data(d, [f.name for f in figs]))
    tail = f'<script type="application/json" id="nenya-data">{blob}</script>\n<script>\n{script}\n</script>\n'
    at = page.rindex("</body>")  # the last one: BokehJS's own source contains the string too
    return page[:at] + tail + page[at:]
