"""The explorer page (``nenya explore``): the explorer's document (``layout.py``) with the points in it.

Both views draw the same ``ColumnDataSource`` through views that share one ``BooleanFilter``, so a
selection or a filter is the same in both by construction. The page's host script (``page_host.js``)
computes over the points the page holds; the shared ``nenya.js`` runs the panel and ``window.nenya``.
The page is one file: BokehJS inline, data in the document, a Content-Security-Policy that forbids
fetching anything.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from importlib import resources

import numpy as np

from nenya.analysis.explorer.data import Column
from nenya.analysis.explorer.layout import (
    colour_mappers,
    draw_coastlines,
    json_in_html,
    nenya_js,
    script_data,
    side_panel,
    span,
    view_figure,
    wire_view,
)
from nenya.analysis.explorer.stats import stats_spec

CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'"
)
MARKER = "square"


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
    source: str | None = None  # the table `nenya trends` reads (the page's latents or coordinates)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


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


def _views(d: PageData, source, filt, colour_spec) -> list:
    from bokeh.models import CDSView, ColumnDataSource

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
            xf, yf, source=marks, size=11, fill_color=None, line_color="red", line_width=2, name=f"marks:{fig.name}"
        )
        wire_view(fig, r)
    return [f for f, _, _ in figs]


def _script_data(d: PageData, views: list[str]) -> dict:
    return {
        **script_data(
            d.columns,
            d.colour,
            d.dt_column,
            d.dt_bins,
            stats=stats_spec(d.columns, None if d.lonlat is None else d.lonlat[1]),
            source=d.source,
        ),  # fmt: skip
        "n": len(d.ids),
        "title": d.title,
        "note": d.note,
        "among": "among the points shown",
        "views": views,
        "k": int(d.nbr.shape[1]) if d.nbr.ndim == 2 else 0,
        "metric": d.metric,
        "nbr": _b64(d.nbr.astype(np.int32)),
        "nbr_score": _b64(d.nbr_score.astype(np.float32)),
        "thumbs": d.thumbs,
        "thumb_rows": [int(r) for r in d.thumb_rows],
    }


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

    figs = _views(d, source, filt, colour_spec)
    first_num = next((m for c, m in mappers.items() if type(m).__name__ == "LinearColorMapper"), None)
    if first_num is not None:
        bar = ColorBar(color_mapper=first_num, name="nenya-colorbar", width=12, visible=False)
        figs[0].add_layout(bar, "right")
    layout = row(column(*figs), column(*side_panel(d.columns, d.colour, d.dt_column, d.dt_bins)))
    # every colour mapper must be in the document for the script to find it by name
    holder = ColumnDataSource({"m": []}, name="nenya-mappers", tags=list(mappers.values()))
    page = file_html([layout, holder], INLINE, d.title)
    host = resources.files("nenya.analysis.explorer").joinpath("page_host.js").read_text(encoding="utf-8")
    script = nenya_js(host)
    head = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
    at = page.index('<meta charset="utf-8">') + len('<meta charset="utf-8">')  # in <head>, before any script
    page = page[:at] + "\n" + head + page[at:]
    blob = json_in_html(_script_data(d, [f.name for f in figs]))
    tail = f'<script type="application/json" id="nenya-data">{blob}</script>\n<script>\n{script}\n</script>\n'
    at = page.rindex("</body>")  # the last one: BokehJS's own source contains the string too
    return page[:at] + tail + page[at:]
