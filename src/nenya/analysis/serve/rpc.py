"""The operations of ``window.nenya`` on the server (``nenya serve``): a table from name to function,
and the channel that carries requests and replies.

Each function takes the browser session and the request's arguments and either answers at once (it
runs on the event loop, under the document lock: cheap work and view updates) or returns an
:class:`Offload`, whose ``work`` runs in the server's worker pool while other sessions go on, and
whose ``then`` applies the result back under the lock. A new API function is one entry in
:data:`OPS` (and its line in ``serve_host.js``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nenya.analysis.serve.app import Session

log = logging.getLogger(__name__)

__all__ = ["OPS", "Channel", "Offload", "export"]

INLINE_REPLY = 1_000_000  # replies longer than this (characters of JSON) travel as a download


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


def _stats(s: Session, a: dict) -> Offload:
    """Points per bin of every chart (``explorer/stats.py``), shown and selected, over all items; the
    shown counts are kept until the filters change."""
    keep, rows, cached = s.keep, s.selected, s.shown_counts
    binned = s.c.binned

    def work() -> tuple:
        shown = cached[1] if cached is not None and cached[0] is keep else binned.counts(keep)
        return keep, shown, binned.counts(rows), int(np.count_nonzero(keep)), len(rows)

    def then(r: tuple) -> dict:
        s.shown_counts = (r[0], r[1])
        return {"shown": r[3], "selected": r[4], "all": r[1], "sel": r[2]}

    return Offload(work, then)


def _filters(s: Session, a: dict) -> dict:
    """The active filters in the API's form (ranges' open ends as None)."""
    out: dict[str, dict] = {}
    for name, f in s.filters.items():
        if "values" in f:
            out[name] = {"values": list(f["values"])}
        else:
            lo, hi = (float(v) if np.isfinite(v) else None for v in f["range"])
            out[name] = {"range": [lo, hi], "leftOpen": bool(f.get("left_open"))}
    return out


def _neighbours(s: Session, a: dict) -> Offload | None:
    row = s.c.row_of(str(a["id"]))
    if row is None:
        return None
    k = s.state.options.k
    return Offload(lambda: (row, *s.c.neighbours_of_row(row, k)), lambda r: s.neighbours(*r))


#: The operations of ``window.nenya`` on the server: name -> fn(session, args), answered at once or
#: as an :class:`Offload`. A new API function is one entry here (and its line in serve_host.js).
OPS: dict[str, Callable[[Session, dict], Any]] = {
    "select": _select,
    "selectBox": _select,
    "selectedIds": _ids(lambda s: s.selected),
    "shownIds": _ids(lambda s: np.flatnonzero(s.keep)),
    "exportCsv": export,
    "selection": lambda s, a: s.selection(),
    "setFilter": lambda s, a: s.set_filter(str(a["name"]), a.get("spec"), bool(a.get("left_open"))),
    "clearFilters": lambda s, a: s.clear_filters(),
    "clearSelection": lambda s, a: s.clear_selection(),
    "setColour": lambda s, a: s.set_colour(str(a["name"])),
    "find": lambda s, a: s.find(str(a["id"])),
    "neighbours": _neighbours,
    "nearest": lambda s, a: s.nearest(str(a["view"]), a.get("x"), a.get("y")),
    "showQuery": lambda s, a: s.show_query(str(a["token"])),
    "setView": lambda s, a: s.set_view(str(a["view"]), a["x0"], a["x1"], a["y0"], a["y1"]),
    "state": lambda s, a: s.status(),
    "stats": _stats,
    "filters": _filters,
}


def _polygon(poly: Any) -> tuple[list[float], list[float]]:
    if not isinstance(poly, list) or not all(isinstance(p, list) and len(p) == 2 for p in poly):
        raise ValueError("a polygon is a list of [x, y] pairs")
    return [float(p[0]) for p in poly], [float(p[1]) for p in poly]


class Channel:
    """A session's two data sources that nothing draws: requests in (``nenya-rpc-in``), replies out
    (``nenya-rpc-out``). A text model would be rendered as markup even when hidden, and requests carry
    ids. Every reply carries the session's note, so the page's note follows what the server did."""

    def __init__(self, session: Session) -> None:
        from bokeh.models import ColumnDataSource, CustomJS

        self.s = session
        self.rpc_in = ColumnDataSource({"msg": [""]}, name="nenya-rpc-in")
        self.rpc_in.on_change("data", lambda attr, old, new: self.on_rpc(new["msg"][0]))
        self.rpc_out = ColumnDataSource({"msg": [""]}, name="nenya-rpc-out")
        code = "window.nenyaHost && window.nenyaHost._reply(cb_obj.data.msg[0])"
        self.rpc_out.js_on_change("data", CustomJS(code=code))
        self.last_note: list[str] = []

    def models(self) -> list:
        return [self.rpc_in, self.rpc_out]

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
            fn = OPS.get(op)
            if fn is None:
                raise ValueError(f"unknown request {op!r}")
            out = fn(self.s, msg.get("args") or {})
        except Exception as e:  # every failure is answered, and the server keeps serving
            return self.fail(rid, op, e)
        if isinstance(out, Offload):
            self.offload(rid, op, out)
        else:
            self.send(self.reply(rid, out))

    def offload(self, rid: Any, op: str, off: Offload) -> None:
        from nenya.analysis.serve.work import Busy

        # with no ``then``, the worker also encodes the reply (a long list of ids: seconds of JSON at 1M)
        work = off.work if off.then is not None else (lambda: self.reply(rid, off.work()))
        try:
            future = asyncio.wrap_future(self.s.state.work.submit(work))
        except (Busy, RuntimeError) as e:
            return self.fail(rid, op, e)

        def done(f: asyncio.Future) -> None:  # on the loop, without the lock: hand back under it
            if f.cancelled():
                return
            e = f.exception()
            if e is not None:
                cb = functools.partial(self.fail, rid, op, e)
            elif off.then is None:
                cb = functools.partial(self.send, f.result())  # the reply, encoded by the worker
            else:
                cb = functools.partial(self._then, rid, op, off.then, f.result())
            self.s.doc.add_next_tick_callback(cb)

        future.add_done_callback(done)

    def _then(self, rid: Any, op: str, then: Callable[[Any], Any], data: Any) -> None:
        try:
            self.send(self.reply(rid, then(data)))
        except Exception as e:
            self.fail(rid, op, e)

    def reply(self, rid: Any, result: Any) -> str:
        """The reply's JSON; a long one is written to a file and offered as a download."""
        body = json.dumps({"id": rid, "ok": True, "result": result}, allow_nan=False)
        if len(body) <= INLINE_REPLY:
            return body
        state = self.s.state
        path = state.new_file(".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f)
        url = state.offer(path, "reply.json", "application/json")
        return json.dumps({"id": rid, "ok": True, "url": url, "json": True})

    def fail(self, rid: Any, op: str, e: BaseException) -> None:
        if not isinstance(e, (ValueError, KeyError, TypeError, RuntimeError)):
            log.error("request %s failed", op, exc_info=e)
        self.send(json.dumps({"id": rid, "ok": False, "error": str(e).strip("'\"")}))

    def note(self) -> None:
        """Tell the page the note changed (a view was panned: what it draws)."""
        if self.s.note_lines() != self.last_note:
            self.send(json.dumps({"id": None, "ok": True}))

    def send(self, text: str) -> None:
        lines = self.s.note_lines()
        if lines != self.last_note:  # the note travels with the message (one message per tick)
            self.last_note = lines
            text = text[:-1] + ', "note": ' + json.dumps(lines) + "}"
        self.rpc_out.data = {"msg": [text]}
