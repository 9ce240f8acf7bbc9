"""HDF5 helpers: safe opening, lazy per-process handles, Nenya metadata tables (and their types)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from nenya._errors import InputError


def open_checked(path: str) -> h5py.File:
    """Open an HDF5 file read-only, with errors that say what is wrong and refusing external data."""
    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    if os.path.getsize(path) == 0:
        raise InputError(f"input file {path} is empty (0 bytes); re-copy it from its source")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path} is not an HDF5 file; expected a Nenya preproc .h5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"cannot open {path} as HDF5 ({e}); the file may be truncated: re-copy it") from None
    for name in list(f.keys()):
        link = f.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            f.close()
            raise InputError(
                f"{path}: dataset {name!r} is an external link to {link.filename!r}; "
                "nenya refuses external links (they can read files outside the input)"
            )
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset) and obj.external:
            f.close()
            raise InputError(f"{path}: dataset {name!r} uses external storage; nenya refuses it")
        if isinstance(obj, h5py.Dataset) and obj.is_virtual:
            others = sorted({s.file_name for s in obj.virtual_sources() if s.file_name != "."})
            if others:
                f.close()
                raise InputError(
                    f"{path}: dataset {name!r} is a virtual dataset reading {others[0]!r}; nenya "
                    "refuses data from other files (rewrite it as a plain dataset)"
                )
    return f


class LazyH5:
    """An HDF5 path whose handle is opened on first use in each process (fork and spawn safe)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = open_checked(self.path)
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_file": None, "_pid": None}


def check_images(path: str, name: str, dset: h5py.Dataset) -> None:
    """Cutout datasets are (N, H, W) or (N, C, H, W) of numbers; anything else is an error."""
    if dset.ndim not in (3, 4):
        raise InputError(
            f"{path}: dataset {name!r} has shape {dset.shape}; expected (N, H, W) or (N, C, H, W) "
            "cutouts. nenya never reshapes rows silently: rewrite the file with that layout"
        )
    if not np.issubdtype(dset.dtype, np.number) or np.issubdtype(dset.dtype, np.complexfloating):
        raise InputError(f"{path}: dataset {name!r} has dtype {dset.dtype}; expected float32 cutouts")


def metadata_columns(f: h5py.File, partition: str) -> list[str]:
    meta = f.get(f"{partition}_metadata")
    if not isinstance(meta, h5py.Dataset) or "columns" not in meta.attrs:
        return []
    return [c.decode() if isinstance(c, bytes) else str(c) for c in meta.attrs["columns"]]


def read_rows(dset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read the given increasing rows with as few contiguous slab reads as possible."""
    if len(rows) == 0:
        return np.empty((0,) + dset.shape[1:], dset.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo == len(rows):
        return dset[lo:hi]
    if hi - lo <= 4 * len(rows):  # one slab and a take beats many small reads
        return dset[lo:hi][rows - lo]
    return dset[rows]


def as_strings(arr: np.ndarray) -> np.ndarray:
    """Byte-string table cells -> str (Nenya stores numbers as text too)."""
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8")
    return arr.astype(str)


#: Cells that mean "no value": pandas' CSV reader's default ``na_values``, and ``NaT``.
MISSING_CELLS = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A"]
    + ["NA", "NULL", "NaN", "None", "n/a", "nan", "null", "NaT"]
)
#: The metadata types: text, numbers, and times (microseconds: what DuckDB, Spark and Lance call a timestamp).
TEXT, INT, FLOAT, TIME = "str", "int64", "float64", "datetime64[us]"
# a time is ISO 8601 from its first character (pandas would also read "today" or "March" as dates)
_ISO_DATE = r"\s*[+-]?\d{4}-\d{2}-\d{2}"


@dataclass(frozen=True)
class _Cells:
    """What the cells of one text column seen so far hold; ``|`` adds more cells."""

    values: bool = False  # some cell is not missing
    missing: bool = False  # some cell is missing
    numbers: bool = True  # every value is a number ...
    integers: bool = True  # ... an integer that fits int64
    times: bool = True  # every value is an ISO 8601 date or time

    def __or__(self, other: _Cells) -> _Cells:
        return _Cells(
            self.values or other.values,
            self.missing or other.missing,
            self.numbers and other.numbers,
            self.integers and other.integers,
            self.times and other.times,
        )

    @property
    def kind(self) -> str:
        if not self.values:
            return TEXT  # nothing to tell a type from
        if self.numbers:
            return INT if self.integers and not self.missing else FLOAT  # missing values: NaN, as pandas
        return TIME if self.times else TEXT


def _cells(values: np.ndarray, *, times: bool) -> _Cells:
    import pandas as pd

    s = pd.Series(values, dtype=object)
    missing = s.isin(MISSING_CELLS)
    s = s[~missing]
    if s.empty:
        return _Cells(missing=bool(missing.any()))
    numbers = pd.to_numeric(s, errors="coerce")
    if numbers.notna().all():
        return _Cells(True, bool(missing.any()), True, numbers.dtype == np.int64, False)
    times = times and bool(s.str.match(_ISO_DATE).all()) and bool(_times(s).notna().all())
    return _Cells(True, bool(missing.any()), False, False, times)


def _times(s):
    import pandas as pd

    # offsets are turned into UTC; times without one are taken as they are
    return pd.to_datetime(s, format="ISO8601", utc=True, errors="coerce").dt.tz_convert(None)


def metadata_kinds(tables: Iterable[tuple[Sequence[str], np.ndarray]]) -> dict[str, str]:
    """The type of each metadata column, told from every cell of the ``(columns, text table)`` pairs
    given (all the blocks of every partition of a file, so that one type holds in all its shards).

    As pandas' CSV reader types a column: ``int64`` when every value is an integer, else ``float64``
    when every value is a number (missing cells, :data:`MISSING_CELLS`, become NaN); ``datetime64[us]``
    when every value is an ISO 8601 date or time (offsets converted to UTC); else ``str``. A column
    with no value at all stays text. Convert the cells with :func:`typed_column`.

    Example:
        >>> metadata_kinds([(["lat", "pp_idx"], np.array([["12.5", "0"], ["-3", "1"]]))])
        {'lat': 'float64', 'pp_idx': 'int64'}
    """
    seen: dict[str, _Cells] = {}
    for columns, table in tables:
        for j, c in enumerate(columns):
            before = seen.get(c, _Cells())
            seen[c] = before | _cells(table[:, j], times=before.times)
    return {c: cells.kind for c, cells in seen.items()}


def typed_column(values: np.ndarray, kind: str) -> np.ndarray:
    """Text cells -> an array of ``kind`` (from :func:`metadata_kinds`); missing cells -> NaN / NaT."""
    import pandas as pd

    if kind == TEXT:
        return values
    s = pd.Series(values, dtype=object)
    if kind == INT:
        return pd.to_numeric(s).to_numpy(np.int64)
    s = s.where(~s.isin(MISSING_CELLS))
    if kind == FLOAT:
        return pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
    if kind == TIME:
        return _times(s).to_numpy(TIME)
    raise ValueError(f"unknown metadata type {kind!r}; expected one of {TEXT}, {INT}, {FLOAT}, {TIME}")


def metadata_blocks(meta: h5py.Dataset, columns: Sequence[str], rows: int = 1 << 16):
    """``(columns, text table)`` of ``rows`` rows at a time: a big table is never all in memory."""
    for a in range(0, meta.shape[0], rows):
        yield columns, as_strings(meta[a : a + rows])
