"""The explorer page (``nenya explore``): the explorer's document (``layout.py``) with the points in it.

Both views draw the same ``ColumnDataSource`` through views that share one ``BooleanFilter``, so a
selection or a filter is the same in both by construction. The page's host script (``page_host.js``)
computes over the points the page holds; the shared ``nenya.js`` runs the panel and ``window.nenya``.
The page is one file: BokehJS inline, data in the document, a Content-Security-Policy that forbids
fetching anything.

The points' source (``nenya-points``) holds each array once, in the smallest type that keeps it exact
(Bokeh gzips them): ``x``, ``y`` (float32); a category ``c<i>`` as level codes (its levels are in the
script's data); a number as the narrowest integer or float type that holds every value exactly (the
export writes the same text); the map's longitude and latitude are their columns' fields when the
table has them as numbers (else ``lon``, ``lat``); ids as ``idp`` (a code into the script's
``id_prefixes``) and ``idn`` (the decimal number that ends the id, -1 for none) when that is smaller,
else ``id`` (the strings); and ``colour``, each point's index into one palette (:func:`palette`:
Viridis for numbers and dates, grey for missing, the category colours), which every glyph draws
through one fixed mapper: a change of colour rewrites that array, nothing else. The neighbour lists
are a second source (``nenya-neighbours``), their bytes grouped by significance so that gzip packs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from nenya.analysis.explorer.data import Column
from nenya.analysis.explorer.layout import (
    _palette,
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
NUM_COLOURS = 256  # a number's or date's colours (Viridis), codes 0..255
NAN_CODE = 256  # no value
CAT_CODE = 257  # a category's level k is CAT_CODE + k % CAT_COLOURS
CAT_COLOURS = 20
NAN_COLOUR = "#bbbbbb"
# an id read as a prefix and the decimal number that ends it (no leading zero: the text comes back the same)
ID_END = re.compile(r"(.*?)(0|[1-9][0-9]{0,14})", re.S)


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


def palette() -> list[str]:
    """The one palette every point is drawn from (codes: :data:`NUM_COLOURS`, :data:`NAN_CODE`, :data:`CAT_CODE`)."""
    from bokeh.palettes import Viridis256

    return [*Viridis256, NAN_COLOUR, *_palette(CAT_COLOURS)]


def colour_codes(c: Column, values: np.ndarray) -> np.ndarray:
    """Each point's palette index when coloured by ``c`` (``values``: its array on the page). The same
    rule as ``colourCodes`` in page_host.js, which is Bokeh's LinearColorMapper over Viridis for
    numbers and dates (the range ``c.lo`` to ``c.hi``) and the category colours by level."""
    if c.kind == "cat":
        return (CAT_CODE + np.asarray(values, np.int64) % CAT_COLOURS).astype(np.uint16)
    v = np.asarray(values, np.float64)
    lo = c.lo if c.lo is not None else 0.0
    hi = c.hi if c.hi is not None and c.hi > lo else lo + 1.0
    with np.errstate(invalid="ignore"):
        key = np.clip(np.floor(((v - lo) * (1.0 / (hi - lo))) / (1.0 / NUM_COLOURS)), 0, NUM_COLOURS - 1)
    key = np.where(v == hi, NUM_COLOURS - 1, key)
    return np.where(np.isnan(v), NAN_CODE, key).astype(np.uint16)


def compact(v: np.ndarray) -> np.ndarray:
    """``v`` (float64) in the smallest type that holds every value exactly: an integer type when all are
    whole and finite, else float32 when that round-trips, else float64."""
    v = np.asarray(v, np.float64)
    if len(v) and np.isfinite(v).all() and (v == np.round(v)).all():
        lo, hi = v.min(), v.max()
        for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32):
            if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
                return v.astype(t)
    f = v.astype(np.float32)
    return f if np.array_equal(f.astype(np.float64), v, equal_nan=True) else v


def _codes(n: int) -> type:
    return np.uint8 if n <= 256 else np.uint16 if n <= 65536 else np.int32


def level_codes(c: Column) -> np.ndarray:
    """A category's values as codes into its levels."""
    codes = pd.Categorical(list(c.values), categories=c.levels).codes
    if len(codes) and codes.min() < 0:
        raise ValueError(f"column {c.name}: a value is not among its levels")
    return codes.astype(_codes(len(c.levels)))


def id_fields(ids: list[str]) -> tuple[dict, list[str] | None]:
    """The ids as the page holds them: ``idp`` (codes into the prefixes returned) and ``idn`` (the number
    that ends each id, -1 for none: the prefix is then the whole id) when that is smaller, else ``id``."""
    prefixes: dict[str, int] = {}
    pcode = np.zeros(len(ids), np.int64)
    num = np.full(len(ids), -1, np.float64)
    for i, s in enumerate(ids):
        m = ID_END.fullmatch(s)
        head = s if m is None else m.group(1)
        pcode[i] = prefixes.setdefault(head, len(prefixes))
        if m is not None:
            num[i] = int(m.group(2))
        if len(prefixes) > max(256, len(ids) // 4):  # mostly distinct: plain strings are smaller
            return {"id": ids}, None
    idn = num.astype(np.int32) if len(num) and num.max() < 2**31 else num
    return {"idp": pcode.astype(_codes(len(prefixes))), "idn": idn}, list(prefixes)


def _map_fields(d: PageData, data: dict) -> list[str] | None:
    """The fields the map draws: the columns that hold the longitudes and latitudes, else new ones."""
    if d.lonlat is None:
        return None
    out = []
    for name, arr in zip(("lon", "lat"), d.lonlat):
        same = (
            f"c{i}"
            for i, c in enumerate(d.columns)
            if c.kind == "num" and np.array_equal(np.asarray(c.values, np.float64), arr, equal_nan=True)
        )
        field = next(same, None)
        if field is None:
            field, data[name] = name, np.asarray(arr, np.float64)
        out.append(field)
    return out


def _source_data(d: PageData) -> tuple[dict, dict]:
    """The points' source and what the script needs to read it (``map_fields``, ``id_prefixes``)."""
    data: dict = {"x": d.x.astype(np.float32), "y": d.y.astype(np.float32)}
    ids, prefixes = id_fields(d.ids)
    data.update(ids)
    colour = np.full(len(d.ids), CAT_CODE, np.uint16)
    for i, c in enumerate(d.columns):
        if c.kind == "cat":
            data[f"c{i}"] = level_codes(c)
        elif c.kind == "num":
            data[f"c{i}"] = compact(np.asarray(c.values, np.float64))
        else:
            data[f"c{i}"] = c.values
        if c.name == d.colour:
            colour = colour_codes(c, data[f"c{i}"])
    data["colour"] = colour
    extra = {"map_fields": _map_fields(d, data), "id_prefixes": prefixes}
    return data, extra


def _shuffled(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a``'s bytes (little-endian ``dtype``) grouped by significance: every first byte, then every
    second... (gzip packs the high bytes of small numbers to nearly nothing; page_host.js regroups them)."""
    b = np.ascontiguousarray(a, dtype=dtype).reshape(-1).view(np.uint8)
    return np.ascontiguousarray(b.reshape(-1, np.dtype(dtype).itemsize).T).reshape(-1)


def _neighbour_source(d: PageData):
    from bokeh.models import ColumnDataSource

    rows = _shuffled(d.nbr, "<i4")
    return ColumnDataSource({"rows": rows, "scores": _shuffled(d.nbr_score, "<f4")}, name="nenya-neighbours")


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


def _views(d: PageData, source, filt, colour_spec, map_fields: list[str] | None) -> list:
    from bokeh.models import CDSView, ColumnDataSource

    figs = []
    marks = ColumnDataSource({"x": [], "y": [], "lon": [], "lat": [], "kind": []}, name="nenya-marks")
    proj = view_figure("projection", "projection", d.xlabel, d.ylabel, x_range=span(d.x), y_range=span(d.y))
    figs.append((proj, "x", "y"))
    if map_fields is not None:
        mp = view_figure(
            "map", "map", "longitude", "latitude", x_range=(-180, 180), y_range=(-90, 90), match_aspect=True
        )
        if d.coast is not None:
            draw_coastlines(mp, d.coast)
        figs.append((mp, *map_fields))
    for (fig, xf, yf), (mx, my) in zip(figs, (("x", "y"), ("lon", "lat"))):
        r = _scatter(fig, source, CDSView(filter=filt), colour_spec, f"points:{fig.name}", xf, yf)
        fig.scatter(
            mx, my, source=marks, size=11, fill_color=None, line_color="red", line_width=2, name=f"marks:{fig.name}"
        )
        wire_view(fig, r)
    return [f for f, _, _ in figs]


def _script_data(d: PageData, views: list[str], extra: dict) -> dict:
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
        "palette": {"num": NUM_COLOURS, "nan": NAN_CODE, "cat": CAT_CODE, "ncat": CAT_COLOURS},
        **extra,
        "thumbs": d.thumbs,
        "thumb_rows": [int(r) for r in d.thumb_rows],
    }


def build_document(d: PageData) -> tuple[list, dict]:
    """The document's roots (the layout, the mappers' holder, the neighbour lists) and the script's data:
    what the page and the notebook (``notebook.py``) show."""
    from bokeh.layouts import column, row
    from bokeh.models import BooleanFilter, ColorBar, ColumnDataSource, CustomJS, LinearColorMapper

    data, extra = _source_data(d)
    source = ColumnDataSource(data, name="nenya-points")
    source.selected.js_on_change("indices", CustomJS(code="window.nenya && window.nenya._onSelect()"))
    filt = BooleanFilter(booleans=np.ones(len(d.ids), dtype=bool), name="nenya-filter")
    mappers = colour_mappers(d.columns)  # the colour bar's; the points are drawn through "nenya-palette"
    pal = palette()
    drawn = LinearColorMapper(palette=pal, low=-0.5, high=len(pal) - 0.5, name="nenya-palette")
    colour_spec = {"field": "colour", "transform": drawn}

    figs = _views(d, source, filt, colour_spec, extra["map_fields"])
    first_num = next((m for c, m in mappers.items() if type(m).__name__ == "LinearColorMapper"), None)
    if first_num is not None:
        bar = ColorBar(color_mapper=first_num, name="nenya-colorbar", width=12, visible=False)
        figs[0].add_layout(bar, "right")
    layout = row(column(*figs), column(*side_panel(d.columns, d.colour, d.dt_column, d.dt_bins)))
    # every colour mapper must be in the document for the script to find it by name
    holder = ColumnDataSource({"m": []}, name="nenya-mappers", tags=list(mappers.values()))
    return [layout, holder, _neighbour_source(d)], _script_data(d, [f.name for f in figs], extra)


def build_page(d: PageData) -> str:
    """The whole HTML page."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    roots, sdata = build_document(d)
    page = file_html(roots, INLINE, d.title)
    host = resources.files("nenya.analysis.explorer").joinpath("page_host.js").read_text(encoding="utf-8")
    script = nenya_js(host)
    head = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
    at = page.index('<meta charset="utf-8">') + len('<meta charset="utf-8">')  # in <head>, before any script
    page = page[:at] + "\n" + head + page[at:]
    blob = json_in_html(sdata)
    tail = f'<script type="application/json" id="nenya-data">{blob}</script>\n<script>\n{script}\n</script>\n'
    at = page.rindex("</body>")  # the last one: BokehJS's own source contains the string too
    return page[:at] + tail + page[at:]
