"""The operations of ``window.nenya`` on the server (``nenya serve``): a table from name to function.

Each function takes the browser session and the request's arguments and either answers at once (it
runs on the event loop, under the document lock: cheap work and widget updates) or returns an
:class:`Offload`, whose ``work`` runs in the server's worker pool while other sessions go on, and
whose ``then`` applies the result back under the lock. A new API function is one entry in
:data:`OPS` (and its name in ``serve.js``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nenya.analysis.serve.app import Session

__all__ = ["OPS", "Offload", "export"]


@dataclass(frozen=True)
class Offload:
    """Work for the worker pool (``work()``, given only what it needs: never the session's widgets),
    then ``then(result)`` back on the loop under the document lock (None: ``work`` made the reply)."""

    work: Callable[[], Any]
    then: Callable[[Any], Any] | None = None


def _select(s: Session, a: dict) -> Offload:
    view, keep = str(a["view"]), s.keep
    if "polygon" in a:
        xs, ys = _polygon(a["polygon"])
        return Offload(lambda: s.c.in_polygon(view, xs, ys, keep), s.set_selection)
    x0, x1, y0, y1 = (float(a[k]) for k in ("x0", "x1", "y0", "y1"))
    return Offload(lambda: s.c.in_rect(view, x0, x1, y0, y1, keep), s.set_selection)


def _ids(rows_of: Callable[[Session], np.ndarray]) -> Callable[[Session, dict], Offload]:
    def op(s: Session, a: dict) -> Offload:
        rows = rows_of(s)  # the session's arrays as they are now; the worker only reads them
        return Offload(lambda: s.c.ids[rows].tolist())

    return op


def export(s: Session, a: dict) -> Offload:
    rows, path = s.selected, s.state.new_file(".csv")

    def work() -> dict:
        n = s.c.write_csv(rows, path)
        return {"url": s.state.offer(path, "nenya-selection.csv", "text/csv"), "rows": n}

    return Offload(work, lambda r: r)


def _neighbours(s: Session, a: dict) -> Offload | None:
    row = s.c.row_of(str(a["id"]))
    if row is None:
        return None
    k = s.state.options.k
    return Offload(lambda: (row, *s.c.neighbours_of_row(row, k)), lambda r: s.show_neighbours(*r))


#: The operations of ``window.nenya`` on the server: name -> fn(session, args), answered at once or
#: as an :class:`Offload`. A new API function is one entry here (and its name in serve.js).
OPS: dict[str, Callable[[Session, dict], Any]] = {
    "select": _select,
    "selectBox": _select,
    "selectedIds": _ids(lambda s: s.selected),
    "shownIds": _ids(lambda s: np.flatnonzero(s.keep)),
    "exportCsv": export,
    "setFilter": lambda s, a: s.set_filter(str(a["name"]), a.get("spec")),
    "clearFilters": lambda s, a: s.clear_filters(),
    "clearSelection": lambda s, a: s.clear_selection(),
    "setColour": lambda s, a: s.set_colour(str(a["name"])),
    "find": lambda s, a: s.find(str(a["id"])),
    "neighbours": _neighbours,
    "queryId": _neighbours,
    "showQuery": lambda s, a: s.show_query(str(a["token"])),
    "setView": lambda s, a: s.set_view(str(a["view"]), a["x0"], a["x1"], a["y0"], a["y1"]),
    "state": lambda s, a: s.status(),
}


def _polygon(poly: Any) -> tuple[list[float], list[float]]:
    if not isinstance(poly, list) or not all(isinstance(p, list) and len(p) == 2 for p in poly):
        raise ValueError("a polygon is a list of [x, y] pairs")
    return [float(p[0]) for p in poly], [float(p[1]) for p in poly]
