"""A CSV or Parquet table of image paths (with ids and metadata columns) as a source.

The table is read once with pyarrow's multithreaded readers; paths are resolved per batch, in
the workers, and never stat'ed up front, so a million-row table reaches its first batch in
seconds. Rows keep the table's order; ``row`` in the output is the row in the table.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from collections.abc import Collection, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nenya._errors import InputError
from nenya.pipeline import storage
from nenya.preprocess import DEFAULT_MAX_PIXELS, ImageTransform
from nenya.sources import SourceOptions
from nenya.sources.images import _image_kwargs, _ImageItems

log = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".csv.bz2", ".csv.zst")
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_table(url: str, *, columns: Sequence[str] | None = None, string_columns: Sequence[str] = ()) -> pa.Table:
    """Read a CSV (``.csv``, ``.tsv``, compressed too) or Parquet table, local or remote.

    ``string_columns`` are read as strings whatever they look like (ids such as ``007``).

    Raises:
        InputError: the table is missing, or of a format nenya does not read.
    """
    name = storage.basename(url).lower()
    fs, path = storage.url_to_fs(url)
    if not fs.exists(path):
        raise InputError(f"table not found: {url}; check the path")
    if name.endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        return pq.read_table(path, filesystem=fs, columns=list(columns) if columns is not None else None)
    if name.endswith(CSV_SUFFIXES):
        from pyarrow import csv

        delimiter = "\t" if ".tsv" in name else ","
        with fs.open(path, "rb", compression="infer") as f:
            head = f.read(1 << 16)
        header = [
            h.strip().strip('"') for h in head.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r").split(delimiter)
        ]
        types = {c: pa.string() for c in string_columns if c in header}
        convert = csv.ConvertOptions(
            column_types=types,
            strings_can_be_null=False,
            include_columns=list(columns) if columns is not None else None,
        )
        with fs.open(path, "rb", compression="infer") as f:
            try:
                return csv.read_csv(f, parse_options=csv.ParseOptions(delimiter=delimiter), convert_options=convert)
            except pa.ArrowInvalid as e:
                raise InputError(f"cannot read {url} as CSV: {e}; check the delimiter and quoting") from None
    raise InputError(
        f"cannot tell the format of {url}: expected a name ending in {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
    )


class PathTableSource(_ImageItems):
    """Images named by a column of a CSV or Parquet table.

    Paths may be absolute, relative to the table's folder, or URLs (``s3://...``); ids come
    from ``id_column`` (default: the path as written in the table) and must be unique. Every
    other column (or those in ``columns``) is carried into the output's metadata with its type.
    A row whose path is empty keeps its slot with status ``skipped:no path``.

    Example:
        >>> src = PathTableSource("images.csv", transform=ImageTransform(size=(224, 224)),
        ...                       id_column="image_id", columns=["label"])

    Args:
        table: a CSV/Parquet file, local or remote.
        transform: resize/crop to the model's input (``encoder.preprocess.image``).
        path_column: the column of image paths.
        id_column: the column of ids (None: the path).
        columns: metadata columns to carry (None: all but the path and id columns).
        skip_ids: ids to leave out before sharding (resume by id).
        max_pixels: images over this many pixels are skipped (``pixel limit``) before decoding.
        jpeg_on_device: send clean JPEGs' bytes for the encoder's device to decode
            (``--decode gpu``, :mod:`nenya.preprocess.device`); other files are decoded here.

    Raises:
        InputError: (at ``plan``) a missing table or column, empty or duplicate ids.
    """

    def __init__(
        self,
        table: str | os.PathLike,
        *,
        transform: ImageTransform = ImageTransform(),
        path_column: str = "path",
        id_column: str | None = None,
        columns: Sequence[str] | None = None,
        skip_ids: Collection[str] = (),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        jpeg_on_device: bool = False,
    ) -> None:
        super().__init__(transform=transform, skip_ids=skip_ids, max_pixels=max_pixels, jpeg_on_device=jpeg_on_device)
        self.table = str(table)
        self.key = self.table
        self.path_column = path_column
        self.id_column = id_column
        self.columns = None if columns is None else list(columns)
        if storage.is_remote(self.table):
            self._base = self.table.rsplit("/", 1)[0]
        else:
            self._base = os.path.dirname(os.path.abspath(storage.local_path(self.table)))

    @classmethod
    def from_spec(cls, where: str, options: SourceOptions) -> PathTableSource:
        """``table:FILE.csv|FILE.parquet`` (``nenya extract --source``)."""
        return cls(
            where,
            path_column=options.path_column,
            id_column=options.id_column,
            columns=options.columns,
            **_image_kwargs(options),
        )

    def _list(self) -> None:
        key_cols = [self.path_column] + ([self.id_column] if self.id_column else [])
        wanted = None if self.columns is None else list(dict.fromkeys(key_cols + self.columns))
        try:
            t = read_table(self.table, columns=wanted, string_columns=key_cols)
        except (KeyError, pa.ArrowInvalid) as e:  # a requested column is absent
            present = read_table(self.table).column_names if wanted is not None else []
            missing = [c for c in (wanted or []) if c not in present]
            raise InputError(
                f"{self.table} has no column {missing[0] if missing else ''!r} ({e}); its columns are {present}"
            ) from None
        present = t.column_names
        for what, col in (("path_column", self.path_column), ("id_column", self.id_column)):
            if col is not None and col not in present:
                raise InputError(
                    f"{self.table} has no {what} {col!r}; its columns are {present}. "
                    f"Name the right one with {what}=... (--{what.replace('_', '-')})"
                )
        meta_cols = [c for c in (present if self.columns is None else self.columns) if c not in key_cols]
        for c in meta_cols:
            if c not in present:
                raise InputError(f"{self.table} has no column {c!r} to carry; its columns are {present}")
        if "path" in meta_cols:
            raise InputError(
                f"{self.table} has a column 'path' that is not the path column "
                f"({self.path_column!r}); the output's 'path' holds the image location. "
                "Use it as the path column, or leave it out with columns=[...]"
            )
        paths = _as_string(t.column(self.path_column))
        ids = paths if self.id_column is None else _as_string(t.column(self.id_column))
        self._check_ids(ids, paths)
        self._listed_total = len(ids)
        rows = self._apply_skip(ids)
        take = None if len(rows) == len(ids) else pa.array(rows)
        self._rows = rows
        self._ids = ids if take is None else ids.take(take)
        self._paths = paths if take is None else paths.take(take)
        meta = t.select(meta_cols) if meta_cols else None
        self._meta = None if meta is None else (meta if take is None else meta.take(take)).combine_chunks()
        log.info("%s: %d rows, metadata columns %s", self.table, len(t), meta_cols)

    def _check_ids(self, ids: pa.Array, paths: pa.Array) -> None:
        nulls = pc.or_(pc.is_null(ids), pc.equal(ids, ""))
        if pc.any(nulls).as_py():
            row = int(np.flatnonzero(nulls.to_numpy(zero_copy_only=False))[0])
            col = self.id_column or self.path_column
            raise InputError(
                f"row {row} of {self.table} has an empty {col!r}; every row needs an id "
                "(fill it, drop the row, or name an id column with id_column=...)"
            )
        if pc.count_distinct(ids).as_py() != len(ids):
            counts = pc.value_counts(ids)
            dup = counts.filter(pc.greater(counts.field("counts"), 1))
            example, times = dup[0]["values"].as_py(), dup[0]["counts"].as_py()
            col = self.id_column or self.path_column
            raise InputError(
                f"{self.table}: {len(dup)} ids in column {col!r} are not unique, e.g. {example!r} "
                f"({times} rows); ids must be unique. Deduplicate the table or name a unique "
                "column with id_column=... (--id-column)"
            )

    def _resolve(self, p: str | None) -> str | None:
        if not p:
            return None
        if "://" in p:
            return storage.local_path(p) if p.startswith("file://") else p
        if os.path.isabs(p):
            return p
        if storage.is_remote(self._base):
            proto, rest = self._base.split("://", 1)
            return proto + "://" + posixpath.normpath(rest + "/" + p)
        return os.path.normpath(os.path.join(self._base, p))

    def _locations(self, a: int, b: int) -> list[str | None]:
        assert self._paths is not None, "plan() lists the paths first"
        return [self._resolve(p) for p in self._paths[a:b].to_pylist()]

    def fingerprint(self) -> str:
        self._ensure_listed()
        h = hashlib.sha256(self._base.encode())
        h.update(super().fingerprint().encode())
        return h.hexdigest()[:16]


def _as_string(col: pa.ChunkedArray) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    return arr
