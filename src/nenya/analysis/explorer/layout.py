"""The explorer's document, described once for both hosts: ``nenya explore`` (the page holds the
points and computes, ``page.py``) and ``nenya serve`` (the server does, ``serve/app.py``).

This module builds what both show the same way: the views' figures, the side panel (title, note,
colour, find, Nenya's DT bins, a filter per column, the buttons, the selection's count, gallery and
table, neighbours, the hover preview, a query's panel), the colour mappers and the JSON the script
reads. Every widget and view event calls the shared script ``nenya.js`` (``window.nenya._ui`` and
friends), which defines ``window.nenya`` and renders the panels; a host script in front of it says
where data and computations live. A new widget: its model in :func:`side_panel`, its action in
``nenya.js``, and where it computes, one function in each host (``page_host.js``; ``serve/rpc.py``
with its line in ``serve_host.js``).
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from nenya.analysis.explorer.data import Column

__all__ = [
    "SIDE", "STYLE", "MAX_TABLE", "MAX_GALLERY", "PANELS", "colour_mappers", "column_specs", "draw_coastlines",
    "json_in_html", "nenya_js", "side_panel", "span", "view_figure", "wire_view",
]  # fmt: skip

STYLE = """
h3 { margin: 6px 0 2px 0; font: bold 13px sans-serif; }
.nenya-note { color: #555; font: 12px sans-serif; }
.nenya-q { color: #a00; }
img.g, img.n, img.p { image-rendering: pixelated; }
img.g { width: 46px; height: 46px; margin: 1px; border: 1px solid #ccc; }
img.n { width: 44px; height: 44px; vertical-align: middle; margin: 1px; }
img.p { width: 128px; height: 128px; border: 1px solid #999; }
.nenya-swatch { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 8px; }
"""
MAX_TABLE = 1000
MAX_GALLERY = 32
BACKEND = "webgl"
SIDE = 430
HIST_HEIGHT = 34  # a filter's chart (pixels)
#: the side panel's text boxes, filled by nenya.js
PANELS = ["nenya-title", "nenya-note", "nenya-legend", "nenya-selinfo", "nenya-stats", "nenya-trends", "nenya-gallery",
          "nenya-nbrs", "nenya-preview", "nenya-query"]  # fmt: skip


def ui(action: str):
    """A widget callback: the shared script's action ``action`` with the widget."""
    from bokeh.models import CustomJS

    return CustomJS(code=f"window.nenya && window.nenya._ui({json.dumps(action)}, cb_obj)")


def nenya_js(host_script: str) -> str:
    """The page's script: the host's (``page_host.js`` or ``serve_host.js``) then the shared ``nenya.js``."""
    shared = resources.files("nenya.analysis.explorer").joinpath("nenya.js").read_text(encoding="utf-8")
    return host_script + "\n" + shared


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


def filter_widgets(cols: list[Column]) -> list:
    """A pick list per category and a range slider per number or date column (named ``filter:c<i>``),
    each calling the shared script's ``filter`` action, under a chart of the column's distribution
    (``hist:c<i>``: the points shown against the selected ones, drawn by the shared script)."""
    from bokeh.models import DatetimeRangeSlider, Div, MultiChoice, RangeSlider

    out = []
    for i, c in enumerate(cols):
        if not c.filters or (c.kind != "cat" and c.lo is None):  # nothing to filter, or no finite value
            continue
        name = f"filter:c{i}"
        if c.kind == "cat":
            w = MultiChoice(title=c.name, options=c.levels, value=[], placeholder="all", name=name, width=SIDE - 20)
            w.js_on_change("value", ui("filter"))
        else:
            lo, hi = float(c.lo or 0.0), float(c.hi if c.hi is not None else 0.0)
            hi = hi if hi > lo else lo + 1.0
            cls = DatetimeRangeSlider if c.kind == "date" else RangeSlider
            extra = {} if c.kind == "date" else {"step": (hi - lo) / 1000}
            w = cls(title=c.name, start=lo, end=hi, value=(lo, hi), name=name, width=SIDE - 20, **extra)
            w.js_on_change("value_throttled", ui("filter"))
        out += [Div(text="", name=f"hist:c{i}", width=SIDE - 20, height=HIST_HEIGHT, margin=(4, 5, -6, 5)), w]
    return out


def panel_divs(names: list[str], css: str) -> dict:
    """The side panel's text boxes, by name, sharing one style sheet."""
    from bokeh.models import Div, InlineStyleSheet

    sheet = InlineStyleSheet(css=css)
    return {n: Div(text="", name=n, width=SIDE, stylesheets=[sheet]) for n in names}


def selection_table(cols: list[Column]):
    """The selection's rows (``nenya-table``, its source ``nenya-table-source``), ids shown as text."""
    from bokeh.models import ColumnDataSource, DataTable, StringFormatter, TableColumn

    source = ColumnDataSource({"id": []} | {f"c{i}": [] for i in range(len(cols))}, name="nenya-table-source")
    columns = [TableColumn(field="id", title="id", formatter=StringFormatter())] + [
        TableColumn(field=f"c{i}", title=c.name) for i, c in enumerate(cols)
    ]
    table = DataTable(
        source=source, columns=columns, width=SIDE, height=220, name="nenya-table", index_position=None,
        reorderable=False,
    )  # fmt: skip
    return table


def json_in_html(obj: dict) -> str:
    """JSON inside a <script> element: nothing in it can end the element or start markup."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def column_specs(cols: list[Column]) -> list[dict]:
    """The columns as the script reads them (with each category's colours, as the mappers draw them)."""
    out = []
    for i, c in enumerate(cols):
        spec = c.spec(f"c{i}")
        if c.kind == "cat":
            spec["colours"] = _palette(len(c.levels))
        out.append(spec)
    return out


def wire_view(fig, renderer) -> None:
    """A view's hover (one card next to the pointer), tap (neighbours) and lasso or box (a selection),
    all through the shared script."""
    from bokeh.models import CustomJS, HoverTool

    view = json.dumps(fig.name)
    fig.add_tools(
        HoverTool(
            renderers=[renderer],
            tooltips=None,  # the script's own card: image, id (as text)
            callback=CustomJS(code=f"window.nenya && window.nenya._hover(cb_data, {view})"),
        )
    )
    fig.js_on_event("tap", CustomJS(code=f"window.nenya && window.nenya._tap(cb_obj, {view})"))
    fig.js_on_event("selectiongeometry", CustomJS(code=f"window.nenya && window.nenya._geometry(cb_obj, {view})"))


def side_panel(cols: list[Column], colour: str | None, dt_column: str | None, dt_bins: dict) -> list:
    """The side panel's models, top to bottom; every widget calls the shared script."""
    from bokeh.layouts import row
    from bokeh.models import Button, Select, TextInput

    div = panel_divs(PANELS, STYLE)
    usable = [c.name for c in cols if c.kind != "text"]
    side: list = [div["nenya-title"], div["nenya-note"]]
    if usable:
        pick = Select(title="colour by", options=usable, value=colour or usable[0], name="nenya-colour")
        pick.js_on_change("value", ui("colour"))
        side += [pick, div["nenya-legend"]]
    find = TextInput(title="find an id", placeholder="id, then Enter", name="nenya-find", width=SIDE - 20)
    find.js_on_change("value", ui("find"))
    side.append(find)
    if dt_column is not None:
        dt = Select(title=f"Nenya DT bin ({dt_column})", options=list(dt_bins), value="all", name="nenya-dt")
        dt.js_on_change("value", ui("dt"))
        side.append(dt)
    side += filter_widgets(cols)
    buttons = []
    for label, name, action in (("Clear filters", "nenya-clear-filters", "clearFilters"),
                                ("Clear selection", "nenya-clear-selection", "clearSelection"),
                                ("Export CSV", "nenya-export", "export")):  # fmt: skip
        b = Button(label=label, name=name, width=130, button_type="primary" if action == "export" else "default")
        b.js_on_event("button_click", ui(action))
        buttons.append(b)
    trends = Button(label="nenya trends command", name="nenya-trends-button", width=200)
    trends.js_on_event("button_click", ui("trends"))
    side += [row(*buttons), div["nenya-selinfo"], div["nenya-stats"], trends, div["nenya-trends"]]
    side += [div["nenya-gallery"], selection_table(cols)]
    side += [div["nenya-nbrs"], div["nenya-preview"], div["nenya-query"]]
    return side


def script_data(
    cols: list[Column], colour: str | None, dt_column: str | None, dt_bins: dict, *, stats: dict, source: str | None
) -> dict:
    """What the shared script reads of the columns, the colour, the DT bins, the statistics' bins
    (``stats.stats_spec``) and the table the trends command reads (``source``; the hosts add theirs)."""

    def finite(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    return {
        "columns": column_specs(cols),
        "colour": colour,
        "dt_column": dt_column,
        "dt_bins": {k: [finite(a), finite(b)] for k, (a, b) in dt_bins.items()},
        "max_table": MAX_TABLE,
        "max_gallery": MAX_GALLERY,
        "stats": stats,
        "source": source,
    }
