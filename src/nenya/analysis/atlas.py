"""The table `embedding-atlas <https://apple.github.io/embedding-atlas/>`_ opens: ``nenya umap --knn K``
adds to the UMAP table a ``neighbors`` column in embedding-atlas's format (per row ``{"ids": [...],
"distances": [...]}``, the ids zero-based row indices of the table, nearest first, the row itself left
out) and, where the collection has images, an ``image`` column of small PNG thumbnails (bytes).

Neighbours are found in latent space with FAISS (exact up to :data:`FLAT_MAX` rows, HNSW above), the
index filled and searched ``chunk`` rows at a time; the result is Arrow arrays, no Python objects per row.
"""

from __future__ import annotations

import io
import logging
import shlex
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nenya.analysis.images import Images, anomaly_rgb
from nenya.analysis.latents import Latents, local_target

log = logging.getLogger(__name__)

__all__ = [
    "NEIGHBORS",
    "IMAGE",
    "FLAT_MAX",
    "knn",
    "neighbors_column",
    "thumbnail_column",
    "write_with_columns",
    "atlas_command",
]

#: The neighbours column (embedding-atlas's ``--neighbors``).
NEIGHBORS = "neighbors"
#: The thumbnails column (embedding-atlas's ``--image``): PNG bytes, null where an image cannot be read.
IMAGE = "image"
#: Exact (flat) FAISS search up to this many rows; HNSW above.
FLAT_MAX = 20_000


def _chunks(data: np.ndarray | Latents, chunk: int):
    if isinstance(data, Latents):
        yield from data.iter_vectors(chunk)
        return
    for a in range(0, len(data), chunk):
        yield a, np.asarray(data[a : a + chunk], dtype=np.float32)


def _prepare(v: np.ndarray, metric: str) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=np.float32)
    if metric == "cosine":
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v


def knn(
    data: np.ndarray | Latents,
    k: int,
    *,
    metric: str = "l2",
    chunk: int = 50_000,
    flat_max: int = FLAT_MAX,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows: ``(rows, distances, counts)``.

    ``rows`` (n, k) int64 and ``distances`` (n, k) float32, nearest first; ``counts`` (n,) how many of
    each row's ``k`` are real (an approximate search can find fewer; the rest are -1 / NaN).
    Distances are Euclidean (``l2``) or ``1 - cos`` (``cosine``), as embedding-atlas's own are.
    The index holds every vector (float32); vectors are read and searched ``chunk`` rows at a time.
    """
    import faiss

    if metric not in ("l2", "cosine"):
        raise ValueError(f"unknown metric {metric!r}; expected l2 or cosine")
    n = data.n if isinstance(data, Latents) else len(data)
    k = min(int(k), n - 1)
    if k < 1:
        raise ValueError(f"neighbours need k >= 1 and at least 2 rows; got k={k}, {n} rows")
    index: Any = None
    for _, v in _chunks(data, chunk):
        v = _prepare(v, metric)
        if index is None:
            fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
            d = v.shape[1]
            if n <= flat_max:
                index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
            else:
                index = faiss.IndexHNSWFlat(d, 16, fmetric)
                index.hnsw.efConstruction = 40
                index.hnsw.efSearch = max(64, 4 * k)
        index.add(v)
    log.info("%s search of %d neighbours (%s) for %d rows", "exact" if n <= flat_max else "HNSW", k, metric, n)
    rows = np.full((n, k), -1, np.int64)
    dist = np.full((n, k), np.nan, np.float32)
    counts = np.zeros(n, np.int64)
    for a, v in _chunks(data, chunk):
        scores, hits = index.search(_prepare(v, metric), k + 1)
        self_rows = np.arange(a, a + len(v))[:, None]
        keep = (hits >= 0) & (hits != self_rows)  # the row itself is not always first: duplicates tie
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        got = np.take_along_axis(keep, order, axis=1)
        h = np.take_along_axis(hits, order, axis=1)
        s = np.take_along_axis(scores, order, axis=1)
        s = np.sqrt(np.maximum(s, 0)) if metric == "l2" else 1 - s
        rows[a : a + len(v)] = np.where(got, h, -1)
        dist[a : a + len(v)] = np.where(got, s, np.nan)
        counts[a : a + len(v)] = got.sum(axis=1)
    return rows, dist, counts


def neighbors_column(rows: np.ndarray, distances: np.ndarray, counts: np.ndarray | None = None) -> pa.StructArray:
    """embedding-atlas's neighbours column: per row ``{"ids": [...], "distances": [...]}`` (the first
    ``counts[i]`` of row ``i``); ids int32 (int64 for tables of 2**31 rows or more)."""
    n, k = rows.shape
    counts = np.full(n, k, np.int64) if counts is None else np.asarray(counts, np.int64)
    take = np.arange(k)[None, :] < counts[:, None]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    big = n >= 2**31 or offsets[-1] >= 2**31
    id_type = pa.int64() if n >= 2**31 else pa.int32()
    list_of = pa.LargeListArray if big else pa.ListArray
    off = pa.array(offsets, pa.int64() if big else pa.int32())
    ids = list_of.from_arrays(off, pa.array(rows[take].astype(id_type.to_pandas_dtype())))
    dist = list_of.from_arrays(off, pa.array(np.asarray(distances, np.float32)[take]))
    return pa.StructArray.from_arrays([ids, dist], names=["ids", "distances"])


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def thumbnail_column(images: Images, n: int, *, chunk: int = 512) -> pa.BinaryArray:
    """PNG bytes of rows ``0..n-1`` (SST cutouts coloured as nenya draws anomalies; photos as the
    lookup's thumbnails), null where an image cannot be read; read ``chunk`` rows at a time."""
    out: list[bytes | None] = []
    for a in range(0, n, chunk):
        for im in images.get(np.arange(a, min(n, a + chunk))):
            if im is None:
                out.append(None)
                continue
            rgb = anomaly_rgb(im) if images.kind == "anomaly" else np.asarray(im, np.uint8)
            out.append(_png(rgb))
    missing = sum(b is None for b in out)
    if missing:
        log.warning("%d of %d rows have no readable image (null in the %r column)", missing, n, IMAGE)
    return pa.array(out, pa.binary())


def write_with_columns(
    df: pd.DataFrame, columns: dict[str, pa.Array], dest: str, *, metadata: dict[str, str] | None = None
) -> str:
    """Write ``df`` plus Arrow ``columns`` (appended as they are, no Python objects per row) as Parquet to a
    local path or URL, atomically, with ``metadata`` in the schema; returns ``dest``. The ``pandas``
    schema metadata describes ``df``'s columns only, so any Parquet reader reads the file back."""
    table = pa.Table.from_pandas(df.drop(columns=[c for c in columns if c in df.columns]), preserve_index=False)
    for name, col in columns.items():
        table = table.append_column(name, col)
    if metadata:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
        )
    with local_target(dest) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return dest


def atlas_command(table: str, *, image: bool) -> str:
    """The ``embedding-atlas`` command line that opens a table written by ``nenya umap --knn``: the
    UMAP as its map (no embedding computed), nenya's neighbours, the thumbnails if there are any."""
    words = ["embedding-atlas", table, "--x", "U0", "--y", "U1", "--neighbors", NEIGHBORS]
    if image:
        words += ["--image", IMAGE]
    return shlex.join([*words, "--disable-projection"])
