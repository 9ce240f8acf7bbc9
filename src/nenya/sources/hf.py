"""Hugging Face datasets as a source: ``hf:PATH``, a ``save_to_disk`` folder or Parquet files in the
datasets layout, read with pyarrow (the ``datasets`` package is not needed).

PATH (a local folder or any fsspec URL) is one of:

- a folder written by ``Dataset.save_to_disk`` (``state.json`` and Arrow stream files) or by
  ``DatasetDict.save_to_disk`` (``dataset_dict.json`` and one such folder per split); Arrow files at
  a URL are fetched into nenya's cache first, then memory-mapped;
- a folder of Parquet files in the datasets layout, ``data/<split>-00000-of-00002.parquet`` or
  ``<split>/*.parquet`` (a file that fits neither belongs to no split), or one Parquet file.

``split`` picks the split (default: ``train`` when there is one, else the only one; several and no
``split`` is an error naming them). The image column (``image_column``, default: the first column of
``{bytes, path}`` structs, as ``datasets.Image`` stores them; a plain binary column works too) holds
the encoded image; when its bytes are null, the image is the file at its ``path``, relative to PATH,
and a path leading outside PATH (``..``, an absolute path elsewhere, a URL) is refused: the row is
skipped. Ids are the ``id_column`` (default: a column named ``id`` when there is one), else
``<split>/<row>`` (``<row>`` without a split), rows counted in the split's file order. Every other
scalar column (or those in ``columns``) is carried as metadata with its type (a name clashing with
``id``, ``path`` or ``vector`` gets an ``hf_`` prefix); ``path`` is ``<data file>#<row>`` for
embedded images, the file for the others. The listing reads the scalar columns only; images are
read in the reader processes, one batch at a time (Parquet row groups, Arrow memory-mapped slices).
A row without an image, or whose image does not decode, keeps its slot with a ``skipped:<reason>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nenya._errors import InputError
from nenya.pipeline import storage
from nenya.preprocess import DEFAULT_MAX_PIXELS, ImageTransform, SkipItem
from nenya.sources import SourceOptions
from nenya.sources.images import _image_kwargs, _ImageItems
from nenya.sources.table import _as_string

log = logging.getLogger(__name__)

__all__ = ["HFDatasetSource", "DatasetLayout", "find_layout"]

RESERVED = ("id", "path", "vector")
_SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+(?:-[0-9a-f]+)?\.parquet$")


@dataclass(frozen=True)
class DatasetLayout:
    """What ``hf:PATH`` names: the ``kind`` of its files (``arrow`` or ``parquet``), the ``split`` read
    (None: the dataset has none) and the data ``files`` of that split, in order (paths or URLs)."""

    kind: str
    split: str | None
    files: tuple[str, ...]


def choose_split(root: str, splits: Sequence[str], split: str | None) -> str:
    """``split`` if the dataset has it; by default ``train``, or the only split."""
    if split is not None:
        if split not in splits:
            raise InputError(f"{root} has no split {split!r}; its splits are {', '.join(splits)} (--split)")
        return split
    if "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise InputError(f"{root} holds the splits {', '.join(splits)}; choose one with --split (split=...)")


def find_layout(root: str, split: str | None = None) -> DatasetLayout:
    """The layout of a ``save_to_disk`` folder, a folder of Parquet files or one Parquet file.

    Raises:
        InputError: PATH is missing or holds neither layout, or the split is missing or not chosen.
    """
    fs, path = storage.url_to_fs(root)
    path = path.rstrip("/") or path
    if not fs.exists(path):
        raise InputError(f"Hugging Face dataset not found: {root}; check the path")
    if fs.isfile(path):
        if not path.endswith(".parquet"):
            raise InputError(f"{root} is a file but not Parquet; give a save_to_disk folder or Parquet files")
        if split is not None:
            raise InputError(f"{root} is one Parquet file, without splits; leave out --split")
        return DatasetLayout("parquet", None, (root,))
    if fs.exists(f"{path}/dataset_dict.json"):
        splits = _json(fs, f"{path}/dataset_dict.json", root).get("splits") or []
        chosen = choose_split(root, list(splits), split)
        sub = storage.join(root, chosen)
        if not fs.exists(f"{path}/{chosen}/state.json"):
            raise InputError(f"the split folder {sub} has no state.json; re-save the dataset with save_to_disk")
        state = _json(fs, f"{path}/{chosen}/state.json", sub)
        return DatasetLayout("arrow", chosen, tuple(storage.join(sub, f["filename"]) for f in state["_data_files"]))
    if fs.exists(f"{path}/state.json"):
        state = _json(fs, f"{path}/state.json", root)
        recorded = state.get("_split")
        if split is not None and split != recorded:
            raise InputError(
                f"{root} is one Dataset (save_to_disk of a Dataset, not a DatasetDict) of split {recorded}; "
                "it has no other split: leave out --split"
            )
        return DatasetLayout("arrow", recorded, tuple(storage.join(root, f["filename"]) for f in state["_data_files"]))
    return _parquet_layout(fs, path, root, split)


def _json(fs, path: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(fs.cat_file(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{where}: {posixpath.basename(path)} is not valid JSON ({e}); re-save the dataset") from None
    return value if isinstance(value, dict) else {}


def _parquet_layout(fs, path: str, root: str, split: str | None) -> DatasetLayout:
    rels = sorted(
        p[len(path) :].lstrip("/")
        for p in storage.retry(lambda: fs.find(path), what=f"listing of {root}")
        if p.endswith(".parquet")
    )
    rels = [r for r in rels if not any(part.startswith(".") for part in r.split("/"))]
    if not rels:
        raise InputError(
            f"{root} holds no Parquet files, no dataset_dict.json and no state.json: "
            "give a folder written by save_to_disk or one of Parquet files (data/train-00000-of-00001.parquet)"
        )
    by_split: dict[str | None, list[str]] = {}
    for rel in rels:
        by_split.setdefault(_split_of(rel), []).append(rel)
    named = [s for s in by_split if s is not None]
    if not named:
        if split is not None:
            raise InputError(f"the Parquet files under {root} have no splits; leave out --split")
        return DatasetLayout("parquet", None, tuple(storage.join(root, r) for r in rels))
    if None in by_split:
        log.warning("%s: left out Parquet files of no split: %s", root, ", ".join(by_split[None][:5]))
    chosen = choose_split(root, named, split)
    return DatasetLayout("parquet", chosen, tuple(storage.join(root, r) for r in by_split[chosen]))


def _split_of(rel: str) -> str | None:
    """The split of a Parquet file: ``<split>-00000-of-00002.parquet``, else its folder (not ``data``)."""
    folder, _, name = rel.rpartition("/")
    m = _SHARD.match(name)
    if m:
        return m.group("split")
    parent = folder.rsplit("/", 1)[-1]
    return parent if parent and parent != "data" else None


def image_column(schema: pa.Schema, name: str | None, where: str) -> str:
    """The column holding the images: ``name``, or the first of ``{bytes, path}`` structs."""
    if name is None:
        for f in schema:
            if _is_image_struct(f.type):
                return f.name
        raise InputError(
            f"{where} has no column of images ({{bytes, path}} structs, as datasets.Image stores them); "
            f"its columns are {schema.names}: name the column of encoded images with --image-column"
        )
    if name not in schema.names:
        raise InputError(f"{where} has no column {name!r} (--image-column); its columns are {schema.names}")
    t = schema.field(name).type
    if not (_is_image_struct(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        raise InputError(
            f"the column {name!r} of {where} is {t}, not images; --image-column takes a column of "
            "{bytes, path} structs (datasets.Image) or of encoded image bytes"
        )
    return name


def _is_image_struct(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and "bytes" in {t.field(i).name for i in range(t.num_fields)}


def _is_scalar(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_temporal(t)
        or pa.types.is_decimal(t)
    )


def _file_stat(fs, path: str) -> tuple:
    """Size and modification time (or version) of a data file: what its fingerprint follows."""
    try:
        info = storage.retry(lambda: fs.info(path), what=f"stat of {path}")
    except FileNotFoundError:
        raise InputError(f"data file of the dataset not found: {path}; re-save the dataset") from None
    when = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
    return info.get("size"), str(when)


class HFDatasetSource(_ImageItems):
    """The images of a Hugging Face dataset on disk or at a URL (see the module docstring).

    Example:
        >>> src = HFDatasetSource("flowers/", split="test", transform=ImageTransform(size=(224, 224)))

    Args:
        root: a ``save_to_disk`` folder, a folder of Parquet files or one Parquet file (path or URL).
        transform: the encoder's image preprocessing. split: the split to read (None: the default).
        image_column: the column of images (None: the first ``{bytes, path}`` struct column).
        id_column: the column of ids (None: ``id`` when present, else ``<split>/<row>``).
        columns: metadata columns to carry (None: every scalar column).
        skip_ids: ids not to read again (resume). max_pixels: skip images with more pixels.
        jpeg_on_device: leave clean JPEGs for the encoder's device to decode.

    Raises:
        InputError: (at ``plan``) see :func:`find_layout`; no image column, a missing column, empty
            or duplicate ids.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        transform: ImageTransform,
        split: str | None = None,
        image_column: str | None = None,
        id_column: str | None = None,
        columns: Sequence[str] | None = None,
        skip_ids: Collection[str] = (),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        jpeg_on_device: bool = False,
    ) -> None:
        super().__init__(transform=transform, skip_ids=skip_ids, max_pixels=max_pixels, jpeg_on_device=jpeg_on_device)
        self.root = storage.absolute(str(root)).rstrip("/") or "/"
        self.key = self.root
        self.split, self.image_column, self.id_column = split, image_column, id_column
        self.columns = None if columns is None else list(columns)
        self._layout = DatasetLayout("parquet", None, ())
        self._local: list[str] = []
        self._stats: list[tuple] = []
        self._starts = np.zeros(1, dtype=np.int64)
        self._image = ""
        self._base = self.root
        self._open: dict[Any, Any] = {}  # per process (never pickled): mapped tables, Parquet files, row groups
        self._pid = os.getpid()

    @classmethod
    def from_spec(cls, where: str, options: SourceOptions) -> HFDatasetSource:
        """``hf:PATH`` (``nenya extract --source``; ``--split``, ``--image-column``, ``--id-column``, ``--columns``)."""
        return cls(
            where,
            split=options.split,
            image_column=options.image_column,
            id_column=options.id_column,
            columns=options.columns,
            **_image_kwargs(options),
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    def _here(self) -> dict[Any, Any]:
        """This process's open files and caches: a forked reader opens its own (file offsets are shared)."""
        if self._pid != os.getpid():
            self._open, self._pid = {}, os.getpid()
        return self._open

    def close(self) -> None:
        for handle in self._open.values():
            if hasattr(handle, "close"):
                handle.close()
        self._open = {}

    # -- listing -----------------------------------------------------------------------------
    def _list(self) -> None:
        layout = find_layout(self.root, self.split)
        self._layout = layout
        fs, path = storage.url_to_fs(self.root)
        self._base = self.root if fs.isdir(path) else self.root.rsplit("/", 1)[0]
        self._local = [self._local_copy(f) for f in layout.files] if layout.kind == "arrow" else list(layout.files)
        self._stats = [(storage.basename(f), *_file_stat(*storage.url_to_fs(f))) for f in layout.files]
        schema = self._schema(0)
        self._image = image_column(schema, self.image_column, layout.files[0])
        id_col = self.id_column or ("id" if "id" in schema.names and self._image != "id" else None)
        if id_col is not None and id_col not in schema.names:
            raise InputError(
                f"{layout.files[0]} has no id column {id_col!r} (--id-column); its columns are {schema.names}"
            )
        meta_cols = self._meta_columns(schema, id_col)
        wanted = ([id_col] if id_col else []) + meta_cols
        tables = [self._read_columns(i, wanted) for i in range(len(layout.files))] if wanted else []
        self._starts = np.concatenate([[0], np.cumsum([self._count(i) for i in range(len(layout.files))])])
        table = pa.concat_tables(tables) if tables else None
        n = int(self._starts[-1])
        if n == 0:
            raise InputError(f"{self.root} (split {layout.split}) has no rows")
        prefix = "" if layout.split is None else f"{layout.split}/"
        if id_col and table is not None:
            ids = _as_string(table.column(id_col))
        else:
            ids = pa.array([f"{prefix}{r}" for r in range(n)], pa.string())
        _check_ids(ids, id_col, self.root)
        self._listed_total = n
        rows = self._apply_skip(ids)
        take = None if len(rows) == n else pa.array(rows)
        self._rows = rows
        self._ids = ids if take is None else ids.take(take)
        self._paths = self._ids  # the files' names, sizes and times join the fingerprint instead
        meta = _metadata(table.select(meta_cols)) if meta_cols and table is not None else None
        self._meta = None if meta is None else (meta if take is None else meta.take(take)).combine_chunks()
        log.info(
            "%s: %d rows (split %s), images in %r, metadata %s", self.root, n, layout.split, self._image, meta_cols
        )

    def _meta_columns(self, schema: pa.Schema, id_col: str | None) -> list[str]:
        if self.columns is not None:
            for c in self.columns:
                if c not in schema.names:
                    raise InputError(
                        f"{self.root} has no column {c!r} to carry (--columns); its columns are {schema.names}"
                    )
                if not _is_scalar(schema.field(c).type):
                    raise InputError(f"the column {c!r} of {self.root} is {schema.field(c).type}, not one value a row")
            return [c for c in self.columns if c not in (id_col, self._image)]
        keep = [f.name for f in schema if f.name not in (id_col, self._image) and _is_scalar(f.type)]
        left = [f.name for f in schema if f.name not in keep and f.name not in (id_col, self._image)]
        if left:
            log.info("%s: not carried (not one value a row): %s", self.root, left)
        return keep

    def _local_copy(self, url: str) -> str:
        try:
            return storage.fetch(url)
        except FileNotFoundError:
            raise InputError(f"data file of the dataset not found: {url}; re-save the dataset") from None

    def fingerprint(self) -> str:
        """The listing's fingerprint, the data files (names, sizes, times), the split and image column."""
        self._ensure_listed()
        h = hashlib.sha256(self.root.encode())
        h.update(super().fingerprint().encode())
        h.update(repr((self._stats, self._layout.split, self._image)).encode())
        return h.hexdigest()[:16]

    def localise(self) -> None:
        if self._layout.kind == "arrow" and not all(os.path.exists(p) for p in self._local):
            self._local = [self._local_copy(f) for f in self._layout.files]

    # -- the files ---------------------------------------------------------------------------
    def _arrow(self, i: int) -> pa.Table:
        """File ``i`` of a save_to_disk folder as a table over its memory map (no copy)."""
        if ("arrow", i) not in self._here():
            try:
                mm = pa.memory_map(self._local[i])
            except FileNotFoundError:
                raise InputError(f"data file of the dataset not found: {self._layout.files[i]}") from None
            try:
                table = pa.ipc.open_stream(mm).read_all()
            except pa.ArrowInvalid:  # the IPC file format (not what datasets writes, but Arrow's other one)
                table = pa.ipc.open_file(mm).read_all()
            self._here()[("arrow", i)] = table
        return self._here()[("arrow", i)]

    def _parquet(self, i: int):
        """File ``i`` of Parquet files, opened once per process."""
        if ("parquet", i) not in self._here():
            import pyarrow.parquet as pq

            url = self._local[i]
            try:  # local files through Arrow's own reader (positional reads), others through fsspec
                handle = None
                if storage.is_remote(url):
                    fs, path = storage.url_to_fs(url)
                    handle = fs.open(path, "rb")
                self._here()[("parquet", i)] = pq.ParquetFile(handle if handle is not None else storage.local_path(url))
            except FileNotFoundError:
                raise InputError(f"data file of the dataset not found: {self._layout.files[i]}") from None
            self._here()[("fh", i)] = handle
        return self._here()[("parquet", i)]

    def _schema(self, i: int) -> pa.Schema:
        return self._arrow(i).schema if self._layout.kind == "arrow" else self._parquet(i).schema_arrow

    def _count(self, i: int) -> int:
        return self._arrow(i).num_rows if self._layout.kind == "arrow" else self._parquet(i).metadata.num_rows

    def _read_columns(self, i: int, cols: list[str]) -> pa.Table:
        """The (scalar) columns ``cols`` of file ``i``, all rows."""
        try:
            if self._layout.kind == "arrow":
                return self._arrow(i).select(cols)
            return self._parquet(i).read(columns=cols)
        except (KeyError, pa.ArrowInvalid) as e:
            raise InputError(
                f"{self._layout.files[i]} has no column {e}; every data file needs the same columns"
            ) from None

    def _images(self, i: int, local: np.ndarray) -> list[Any]:
        """The image column's values at rows ``local`` of file ``i`` (Parquet: their row groups only)."""
        if self._layout.kind == "arrow":
            return self._arrow(i).column(self._image).take(pa.array(local)).to_pylist()
        pf = self._parquet(i)
        meta = pf.metadata
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        groups = np.searchsorted(starts, local, side="right") - 1
        cached = self._here().get("groups", {})
        fresh = {}
        for g in np.unique(groups).tolist():
            key = (i, g)
            fresh[key] = (
                cached[key] if key in cached else pf.read_row_group(g, columns=[self._image]).column(0).to_pylist()
            )
        self._here()["groups"] = fresh  # the last row groups read: the next batch may start in one
        return [fresh[(i, int(g))][int(r - starts[g])] for g, r in zip(groups, local)]

    # -- reading -----------------------------------------------------------------------------
    def _cells(self, a: int, b: int) -> list[tuple[bytes | None, str | None]]:
        """(bytes, path) of the image of items ``a:b``, kept for the ``_blobs`` call that follows."""
        if self._here().get("cells", (None, None))[0] == (a, b):
            return self._here()["cells"][1]
        rows = self._positions_rows(a, b)
        out: list[tuple[bytes | None, str | None]] = [(None, None)] * len(rows)
        file_of = np.searchsorted(self._starts, rows, side="right") - 1
        for f in np.unique(file_of).tolist():
            idx = np.flatnonzero(file_of == f)
            for k, value in zip(idx, self._images(f, rows[idx] - self._starts[f])):
                out[k] = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
        self._here()["cells"] = ((a, b), out)
        return out

    def _positions_rows(self, a: int, b: int) -> np.ndarray:
        assert self._rows is not None, "plan() lists the rows first"
        return self._rows[a:b]

    def _locations(self, a: int, b: int) -> list[str | None]:
        rows = self._positions_rows(a, b)
        file_of = np.searchsorted(self._starts, rows, side="right") - 1
        out: list[str | None] = []
        for (data, path), f, r in zip(self._cells(a, b), file_of, rows):
            if data is not None:
                out.append(f"{self._layout.files[f]}#{r - self._starts[f]}")
            else:
                out.append(None if not path else (self._inside(path) or path))
        return out

    def _inside(self, path: str) -> str | None:
        """The file an image's ``path`` names under the dataset's folder; None when it leads outside."""
        if "://" in path:
            return None
        if storage.is_remote(self._base):
            proto, rest = self._base.split("://", 1)
            if path.startswith("/"):
                return None
            full = posixpath.normpath(f"{rest}/{path}")
            return f"{proto}://{full}" if full.startswith(rest.rstrip("/") + "/") else None
        base = os.path.realpath(self._base)
        full = os.path.realpath(os.path.join(base, path))
        return full if full.startswith(base.rstrip(os.sep) + os.sep) else None

    def _blobs(self, a: int, b: int, locations: Sequence[str | None]) -> list[bytes | SkipItem]:
        out: list[bytes | SkipItem] = [SkipItem("no image")] * (b - a)
        files: list[int] = []
        for k, (data, path) in enumerate(self._cells(a, b)):
            if data is not None:
                out[k] = bytes(data)
            elif path and self._inside(path) is None:
                out[k] = SkipItem("path outside the dataset folder")
                log.debug("refusing %r: an image path of %s must stay inside its folder", path, self.root)
            elif path:
                files.append(k)
        for k, blob in zip(files, self._fetch([locations[k] for k in files])):
            out[k] = blob
        self._here().pop("cells", None)
        return out


def _check_ids(ids: pa.Array, column: str | None, root: str) -> None:
    if column is None:
        return
    if pc.any(pc.or_(pc.is_null(ids), pc.equal(ids, ""))).as_py():
        raise InputError(f"{root}: the id column {column!r} has empty values; name another with --id-column")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise InputError(
            f"{root}: the values of the id column {column!r} are not unique; name a unique column with --id-column"
        )


def _metadata(table: pa.Table) -> pa.Table:
    """Metadata columns as they reach the output: reserved names prefixed, integers with gaps as floats
    (NaN in every batch, not only in those that have a gap)."""
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if col.null_count and (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
            col = col.cast(pa.float64())
        cols[f"hf_{name}" if name in RESERVED else name] = col
    return pa.table(cols)
