"""The status table of an output (``<output>.status.csv``): every item's id once, ``ok`` or
``skipped:<reason>``, in the output's order (an appended run's rows after the existing ones)."""

from __future__ import annotations

import csv
from collections.abc import Iterable

import pyarrow as pa

from nenya.pipeline import storage

STATUS_SUFFIX = ".status.csv"


def read_status(path: str) -> list[tuple[str, str]]:
    """The (id, status) rows of a status table (local or URL); [] when it does not exist."""
    if not storage.exists(path):
        return []
    fs, p = storage.url_to_fs(path)
    with fs.open(p, "r", newline="") as f:
        return [(r["id"], r["status"]) for r in csv.DictReader(f)]


def write_status(path: str, parts: Iterable[pa.Table], tiles: int, previous: str | None = None) -> int:
    """Write the status table ``path`` (local): the rows of the table ``previous`` first when given,
    then the items of each committed part (``tiles`` rows per item); return how many were skipped."""
    skipped = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "status"])
        if previous is not None:
            w.writerows(read_status(previous))
        for part in parts:
            t = part.select(["id", "status"]).to_pydict()
            ids, st = t["id"][::tiles], t["status"][::tiles]
            skipped += sum(s != "ok" for s in st)
            w.writerows(zip(ids, st))
    return skipped
