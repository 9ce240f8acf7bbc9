"""Read latents files of every layout nenya writes: Nenya ``_latents.h5``, Parquet, and ``.npy`` + Parquet.

All three give the same view: string ids, float32 vectors (N, D) and a metadata table in the same
row order. Vectors are read lazily: :meth:`Latents.iter_vectors` streams slabs, so PCA, indexing and
UMAP transforms never need the whole array in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nenya._errors import InputError
from nenya.pipeline import storage

log = logging.getLogger(__name__)

__all__ = [
    "Latents",
    "open_latents",
    "read_latents",
    "read_table",
    "latents_format",
    "numeric_columns",
    "output_path",
    "write_table",
]

H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_PARTITIONS = ("valid", "train")


def latents_format(path: str | os.PathLike) -> str:
    """``"h5"``, ``"parquet"`` or ``"npy"`` from a file name; anything else is an error naming the choices."""
    name = storage.basename(str(path).rstrip("/")).lower()
    if name.endswith(".lance"):
        return "lance"
    if name.endswith(H5_SUFFIXES):
        return "h5"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(".npy"):
        return "npy"
    raise InputError(
        f"cannot tell the layout of {path}: expected a Nenya _latents.h5 file, a Parquet file "
        "with a 'vector' column, X.npy with its X.parquet table of ids, or a Lance dataset X.lance"
    )


def _to_numeric(df: pd.DataFrame) -> pd.DataFrame:
    """Nenya stores numbers as text: turn every text column that parses fully as numbers into numbers
    (typed columns keep their type: times would become nanosecond integers)."""
    for c in df.columns:
        if pd.api.types.is_object_dtype(df[c]) or pd.api.types.is_string_dtype(df[c]):
            try:
                df[c] = pd.to_numeric(df[c])
            except (ValueError, TypeError):
                pass
    return df


def numeric_columns(df: pd.DataFrame) -> list[str]:
    """The columns of ``df`` holding numbers (booleans excluded)."""
    return [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def _open_binary(path: str):
    if storage.is_remote(path):
        fs, p = storage.url_to_fs(path)
        return fs.open(p, "rb")
    local = storage.local_path(path)
    if not os.path.exists(local):
        raise InputError(f"latents file not found: {path}")
    return open(local, "rb")


def _fixed_list_to_numpy(col: pa.ChunkedArray | pa.Array, path: str) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_fixed_size_list(t):
        dim = t.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        lengths = pc_list_lengths(col)
        if len(lengths) and (lengths.min() != lengths.max()):
            raise InputError(
                f"{path}: the 'vector' column holds lists of different lengths "
                f"({lengths.min()} to {lengths.max()}); every vector must have the same size"
            )
        dim = int(lengths[0]) if len(lengths) else 0
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    raise InputError(
        f"{path}: column 'vector' has type {t}; expected a list of float32/float16 "
        "(as `nenya extract --format parquet` writes)"
    )


def pc_list_lengths(col: pa.Array) -> np.ndarray:
    """The length of each list in an Arrow list column, as a NumPy array."""
    import pyarrow.compute as pc

    return pc.list_value_length(col).to_numpy(zero_copy_only=False)


class Latents:
    """A latents file opened for reading: ``ids``, ``metadata``, ``n``, ``dim`` and lazy vectors.

    Use :func:`open_latents` to make one. Skipped items of Nenya files (``<p>_valid`` False, zero
    vectors) are left out; ids of Nenya files are ``"<partition>/<row>"``.

    Attributes:
        path: the file as given.
        format: ``"h5"``, ``"parquet"``, ``"npy"`` or ``"lance"``.
        ids: (N,) object array of str.
        metadata: a DataFrame of N rows (``partition``/``row`` for Nenya files, then the stored columns;
            text columns holding numbers are converted to numbers).
    """

    def __init__(self, path: str, fmt: str, ids: np.ndarray, metadata: pd.DataFrame, dim: int) -> None:
        self.path = path
        self.format = fmt
        self.ids = ids
        self.metadata = metadata.reset_index(drop=True)
        self.dim = dim
        self._h5_parts: list[tuple[str, np.ndarray]] = []  # (dataset, positions kept)
        self._h5_path: str | None = None
        self._npy_path: str | None = None
        self._tmp: list[str] = []

    @property
    def n(self) -> int:
        """Number of vectors (skipped items left out)."""
        return len(self.ids)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Latents({self.path!r}, format={self.format!r}, n={self.n}, dim={self.dim})"

    # -- vectors ------------------------------------------------------------------------
    def iter_vectors(self, chunk: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, vectors)`` slabs of at most ``chunk`` rows, in row order, float32."""
        if self.format == "h5":
            import h5py

            start = 0
            with h5py.File(self._h5_path, "r") as f:
                for name, keep in self._h5_parts:
                    dset = f[name]
                    for a in range(0, len(keep), chunk):
                        pos = keep[a : a + chunk]
                        if len(pos) == 0:
                            continue
                        lo, hi = int(pos[0]), int(pos[-1]) + 1
                        block = dset[lo:hi]
                        v = np.asarray(block[pos - lo], dtype=np.float32)
                        yield start, v
                        start += len(v)
        elif self.format == "npy":
            arr = self._npy()
            for a in range(0, self.n, chunk):
                yield a, np.asarray(arr[a : a + chunk], dtype=np.float32)
        elif self.format == "lance":
            start = 0
            for batch in _lance_dataset(self.path).to_batches(columns=["vector"], batch_size=chunk):
                v = _fixed_list_to_numpy(batch.column(0), self.path)
                yield start, v
                start += len(v)
        else:
            with _open_binary(self.path) as fh:
                pf = pq.ParquetFile(fh)
                start = 0
                for batch in pf.iter_batches(batch_size=chunk, columns=["vector"]):
                    v = _fixed_list_to_numpy(batch.column(0), self.path)
                    yield start, v
                    start += len(v)

    def _npy(self) -> np.ndarray:
        """The vectors of a .npy latents file, memory-mapped."""
        assert self._npy_path is not None  # open_latents sets it for every .npy file
        return np.load(self._npy_path, mmap_mode="r")

    def vectors(self, rows: Sequence[int] | np.ndarray | None = None, *, chunk: int = 65536) -> np.ndarray:
        """All vectors (N, D) float32, or those of ``rows`` (any order) read slab by slab."""
        if rows is None:
            out = np.empty((self.n, self.dim), np.float32)
            for a, v in self.iter_vectors(chunk):
                out[a : a + len(v)] = v
            return out
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise IndexError(f"rows out of range for {self.path} ({self.n} vectors)")
        if self.format == "npy":
            arr = self._npy()
            order = np.argsort(rows, kind="stable")
            out = np.empty((len(rows), self.dim), np.float32)
            out[order] = arr[rows[order]]
            return out
        out = np.empty((len(rows), self.dim), np.float32)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        for a, v in self.iter_vectors(chunk):
            lo, hi = np.searchsorted(srt, [a, a + len(v)])
            if hi > lo:
                out[order[lo:hi]] = v[srt[lo:hi] - a]
        return out

    def row_of(self, id_: str) -> int:
        """The row of an id (an error naming the file when absent)."""
        hits = np.flatnonzero(self.ids == id_)
        if len(hits) == 0:
            raise KeyError(f"id {id_!r} is not in {self.path}; ids look like {', '.join(map(repr, self.ids[:3]))}")
        return int(hits[0])

    def close(self) -> None:
        """Close the file and remove any local copies made for reading it."""
        for t in self._tmp:
            import shutil

            shutil.rmtree(t, ignore_errors=True)
        self._tmp.clear()

    def __enter__(self) -> Latents:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_h5(path: str, partitions: Sequence[str] | None, metadata: bool) -> Latents:
    import h5py

    from nenya.sources.h5files import as_strings, open_checked

    local = storage.fetch(path) if storage.is_remote(path) else storage.local_path(path)
    if not os.path.exists(local):
        raise InputError(f"latents file not found: {path}")
    with open_checked(local) as f:
        wanted = list(partitions) if partitions else [p for p in DEFAULT_PARTITIONS if p in f]
        if not wanted:
            raise InputError(
                f"{path} has no 'valid' or 'train' dataset; it holds {sorted(f.keys())}. "
                "Is it a Nenya _latents.h5 file? (preproc files hold images, not latents)"
            )
        ids, frames, parts, dim = [], [], [], None
        for p in wanted:
            if p not in f:
                raise InputError(f"{path} has no partition {p!r}; it holds {sorted(f.keys())}")
            dset = f[p]
            if not isinstance(dset, h5py.Dataset) or dset.ndim != 2:
                shape = getattr(dset, "shape", None)
                raise InputError(
                    f"{path}: dataset {p!r} has shape {shape}; latents are (N, feat_dim). "
                    "Is this a preproc file (images)? Extract latents first with `nenya extract`"
                )
            if dim is None:
                dim = dset.shape[1]
            elif dset.shape[1] != dim:
                raise InputError(f"{path}: partitions have different widths ({dim} and {dset.shape[1]})")
            n = dset.shape[0]
            rows = f[f"{p}_rows"][:] if f"{p}_rows" in f else np.arange(n, dtype=np.int64)
            valid = f[f"{p}_valid"][:].astype(bool) if f"{p}_valid" in f else np.ones(n, dtype=bool)
            if len(rows) != n or len(valid) != n:
                raise InputError(f"{path}: {p}_rows/{p}_valid do not have {n} entries like {p!r}; the file is damaged")
            keep = np.flatnonzero(valid)
            if len(keep) < n:
                log.info("%s: leaving out %d skipped item(s) of %r", path, n - len(keep), p)
            parts.append((p, keep))
            ids.append(np.array([f"{p}/{r}" for r in rows[keep].tolist()], dtype=object))
            meta = pd.DataFrame({"partition": np.full(len(keep), p, dtype=object), "row": rows[keep]})
            if metadata and f"{p}_metadata" in f:
                m = f[f"{p}_metadata"]
                cols = [c.decode() if isinstance(c, bytes) else str(c) for c in m.attrs.get("columns", [])]
                table = as_strings(m[:]) if m.ndim == 2 else np.empty((n, 0), dtype=str)
                if not cols:
                    cols = [f"meta{j}" for j in range(table.shape[1])]
                extra = pd.DataFrame(table[keep], columns=cols)
                extra = extra.drop(columns=[c for c in ("partition", "row") if c in extra.columns])
                meta = pd.concat([meta, _to_numeric(extra)], axis=1)
            frames.append(meta)
    lat = Latents(
        path,
        "h5",
        np.concatenate(ids) if ids else np.array([], dtype=object),
        pd.concat(frames, ignore_index=True),
        int(dim or 0),
    )
    lat._h5_path = local
    lat._h5_parts = parts
    return lat


def _open_parquet(path: str, metadata: bool) -> Latents:
    with _open_binary(path) as fh:
        pf = pq.ParquetFile(fh)
        names = pf.schema_arrow.names
        if "vector" not in names:
            raise InputError(
                f"{path} has no 'vector' column (columns: {', '.join(names[:12])}); a Parquet "
                "latents file holds id, metadata columns and vector (see `nenya extract --format parquet`)"
            )
        vtype = pf.schema_arrow.field("vector").type
        dim = vtype.list_size if pa.types.is_fixed_size_list(vtype) else None
        cols = [c for c in names if c != "vector"] if metadata else [c for c in ("id",) if c in names]
        table = pf.read(columns=cols) if cols else pa.table({})
        n = pf.metadata.num_rows
        if dim is None:  # variable-size lists: look at the first row group only
            first = pf.read_row_group(0, columns=["vector"]) if pf.num_row_groups else None
            dim = int(pc_list_lengths(first.column("vector").combine_chunks())[0]) if first is not None and n else 0
    df = table.to_pandas() if cols else pd.DataFrame(index=range(n))
    ids = (
        df.pop("id").astype(str).to_numpy(dtype=object)
        if "id" in df.columns
        else np.arange(n).astype(str).astype(object)
    )
    return Latents(path, "parquet", ids, _to_numeric(df), int(dim))


def _lance_dataset(path: str):
    import warnings

    # lance warns when a process that used it forks; the reader processes that fork never use it
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    try:
        import lance
    except ImportError:
        raise InputError(f'reading the Lance dataset {path} needs pylance: pip install "nenya[lance]"') from None
    local = storage.local_path(path) if not storage.is_remote(path) else path
    if not storage.is_remote(path) and not os.path.isdir(local):
        raise InputError(f"latents file not found: {path}")
    return lance.dataset(local)


def _open_lance(path: str, metadata: bool) -> Latents:
    ds = _lance_dataset(path)
    names = ds.schema.names
    if "vector" not in names:
        raise InputError(f"{path} has no 'vector' column (columns: {', '.join(names[:12])})")
    vtype = ds.schema.field("vector").type
    dim = vtype.list_size if pa.types.is_fixed_size_list(vtype) else 0
    cols = [c for c in names if c != "vector"] if metadata else [c for c in ("id",) if c in names]
    n = ds.count_rows()
    df = ds.to_table(columns=cols).to_pandas() if cols else pd.DataFrame(index=range(n))
    ids = (
        df.pop("id").astype(str).to_numpy(dtype=object)
        if "id" in df.columns
        else np.arange(n).astype(str).astype(object)
    )
    return Latents(path, "lance", ids, _to_numeric(df), int(dim))


def _open_npy(path: str, metadata: bool) -> Latents:
    table_path = path[:-4] + ".parquet"
    local = storage.fetch(path) if storage.is_remote(path) else storage.local_path(path)
    if not os.path.exists(local):
        raise InputError(f"latents file not found: {path}")
    arr = np.load(local, mmap_mode="r")
    if arr.ndim != 2:
        raise InputError(f"{path} holds an array of shape {arr.shape}; latents are (N, dim)")
    if not storage.exists(table_path):
        raise InputError(
            f"{path} needs its table of ids {storage.basename(table_path)} next to it "
            "(X.npy is described row by row by X.parquet); copy it alongside"
        )
    with _open_binary(table_path) as fh:
        df = pq.read_table(fh).to_pandas() if metadata else pq.read_table(fh, columns=["id"]).to_pandas()
    if len(df) != arr.shape[0]:
        raise InputError(
            f"{path} has {arr.shape[0]} vectors but {storage.basename(table_path)} has {len(df)} rows; "
            "they must describe the same rows in the same order"
        )
    df = df.drop(columns=[c for c in ("vector",) if c in df.columns])
    ids = (
        df.pop("id").astype(str).to_numpy(dtype=object)
        if "id" in df.columns
        else np.arange(len(df)).astype(str).astype(object)
    )
    lat = Latents(path, "npy", ids, _to_numeric(df), int(arr.shape[1]))
    lat._npy_path = local
    return lat


def read_about(path: str | os.PathLike) -> dict | None:
    """The description of the model that made a latents file (:meth:`nenya.encoders.base.Encoder.about`:
    ``model`` spec, photo ``options``, ``dim``, ``precision``, ``vectors`` digest ...), or None for
    files written by other tools or older versions. Reads the file's header only."""
    from nenya.sinks.parquet import ABOUT_KEY, about_of, parse_about

    path = str(path)
    fmt = latents_format(path)
    try:
        if fmt == "lance":
            return about_of(_lance_dataset(path).schema)
        if fmt == "h5":
            import h5py

            with _open_binary(path) as fh, h5py.File(fh, "r") as f:
                return parse_about(f.attrs.get(ABOUT_KEY.decode()))
        with _open_binary(path[:-4] + ".parquet" if fmt == "npy" else path) as fh:
            return about_of(pq.read_schema(fh))
    except (OSError, ValueError):
        return None


def open_latents(path: str | os.PathLike, *, partitions: Sequence[str] | None = None, metadata: bool = True) -> Latents:
    """Open a latents file (local path or fsspec URL) without reading its vectors.

    Args:
        path: ``X_latents.h5`` (Nenya), ``X.parquet`` (id, metadata, vector) or ``X.npy`` (+ ``X.parquet``).
        partitions: HDF5 partitions to read (default: ``valid`` then ``train``, where present).
        metadata: read the metadata columns (False: ids only).

    Example:
        >>> lat = open_latents("demo/MODIS_demo_latents.h5")   # doctest: +SKIP
        >>> lat.n, lat.dim, lat.ids[0]                          # doctest: +SKIP
        (2000, 128, 'valid/0')
    """
    path = str(path)
    fmt = latents_format(path)
    if fmt == "h5":
        return _open_h5(path, partitions, metadata)
    if fmt == "npy":
        return _open_npy(path, metadata)
    if fmt == "lance":
        return _open_lance(path, metadata)
    return _open_parquet(path, metadata)


def read_latents(
    path: str | os.PathLike, *, partitions: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``(ids, vectors (N, D) float32, metadata DataFrame)`` of a latents file of any layout.

    Example:
        >>> ids, vectors, meta = read_latents("x_latents.h5")    # doctest: +SKIP
    """
    lat = open_latents(path, partitions=partitions)
    try:
        return lat.ids, lat.vectors(), lat.metadata
    finally:
        lat.close()


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A table with an ``id`` column: the ids + metadata of a latents file, or any Parquet/CSV table
    (e.g. the output of ``nenya umap``)."""
    path = str(path)
    name = storage.basename(path).lower()
    if name.endswith(".csv"):
        with _open_binary(path) as fh:
            return pd.read_csv(fh)
    if name.endswith(PARQUET_SUFFIXES):
        with _open_binary(path) as fh:
            schema = pq.ParquetFile(fh).schema_arrow
        if "vector" not in schema.names:
            with _open_binary(path) as fh:
                df = pq.read_table(fh).to_pandas()
            if "id" in df.columns:
                df["id"] = df["id"].astype(str)
            return df
    lat = open_latents(path)
    df = lat.metadata.copy()
    df.insert(0, "id", lat.ids)
    lat.close()
    return df


def output_path(input_path: str, suffix: str, output: str | None = None) -> str:
    """Where a result goes: ``output`` (a file, or a folder ending in ``/`` or existing), else next to
    the input as ``<stem><suffix>`` (e.g. ``x_latents_umap.parquet``)."""
    input_path = input_path.rstrip("/") or input_path  # a dataset folder given as X.lance/
    base = storage.basename(input_path)
    stem = base
    for ext in H5_SUFFIXES + PARQUET_SUFFIXES + (".npy", ".csv", ".faiss", ".lance"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    name = stem + suffix
    if output:
        out = str(output)
        if out.endswith("/") or (not storage.is_remote(out) and os.path.isdir(out)):
            return storage.join(out, name)
        return out
    parent = (
        input_path[: len(input_path) - len(base)].rstrip("/")
        if storage.is_remote(input_path)
        else os.path.dirname(os.path.abspath(storage.local_path(input_path)))
    )
    return storage.join(parent, name) if storage.is_remote(input_path) else os.path.join(parent, name)


def write_table(df: pd.DataFrame, dest: str, *, metadata: dict[str, str] | None = None) -> str:
    """Write a DataFrame as Parquet to a local path or URL, atomically; returns ``dest``."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
        )
    with _local_target(dest) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return dest


class _local_target:
    """A temporary local file that becomes ``dest`` (a local path or URL) on success."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self._dir: str | None = None

    def __enter__(self) -> str:
        if storage.is_remote(self.dest):
            self._dir = storage.make_tempdir("nenya-out-")
            self.tmp = os.path.join(self._dir, "out")
        else:
            local = storage.local_path(self.dest)
            parent = os.path.dirname(os.path.abspath(local))
            os.makedirs(parent, exist_ok=True)
            self.tmp = storage.tmp_name(os.path.abspath(local))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil

        try:
            if exc_type is None:
                if storage.is_remote(self.dest):
                    storage.publish(self.tmp, self.dest)
                else:
                    storage.commit_local(self.tmp, storage.local_path(self.dest))
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
            if self._dir:
                shutil.rmtree(self._dir, ignore_errors=True)


local_target = _local_target
