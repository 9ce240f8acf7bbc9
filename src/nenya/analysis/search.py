"""Similarity search over latent vectors with FAISS: exact flat indexes for small sets, HNSW or IVF for large.

An index is saved as ``X.faiss`` (FAISS's own format) plus ``X.ids.parquet`` (one ``id`` per row of
the index, and the metric and kind in the schema metadata).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nenya._errors import InputError
from nenya.analysis.latents import Latents, local_target, open_latents, read_about
from nenya.pipeline import storage
from nenya.sinks.parquet import ABOUT_KEY, about_of

if TYPE_CHECKING:
    from nenya.encoders import EncoderOptions

log = logging.getLogger(__name__)

__all__ = [
    "LatentIndex",
    "build_index",
    "load_index",
    "open_index",
    "ids_path",
    "KINDS",
    "METRICS",
    "AUTO_FLAT_MAX",
    "encode_query_image",
]

KINDS = ("auto", "flat", "hnsw", "ivf")
METRICS = ("l2", "ip", "cosine")
#: ``kind="auto"`` builds an exact flat index up to this many vectors, HNSW above.
AUTO_FLAT_MAX = 100_000


def ids_path(index_path: str) -> str:
    """``X.faiss`` -> ``X.ids.parquet``."""
    stem = index_path[:-6] if index_path.endswith(".faiss") else index_path
    return stem + ".ids.parquet"


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class LatentIndex:
    """A FAISS index and the ids of its rows.

    Scores are squared L2 distances for ``l2`` (smaller is nearer) and inner products for ``ip``
    and ``cosine`` (larger is nearer; vectors and queries are L2-normalised for ``cosine``).
    """

    index: Any
    ids: np.ndarray
    metric: str
    kind: str
    params: dict
    about: dict | None = None  # the model that made the vectors (Encoder.about), where recorded

    @property
    def n(self) -> int:
        """Number of vectors in the index."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Length of each vector."""
        return int(self.index.d)

    def _prepare(self, q: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(np.atleast_2d(np.asarray(q, dtype=np.float32)))
        if q.shape[1] != self.dim:
            raise InputError(
                f"query vectors have {q.shape[1]} dimensions but the index has {self.dim}; "
                "encode queries with the model that made the latents"
            )
        return _normalise(q) if self.metric == "cosine" else q

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` of each query: ``(ids (Q, k) object, scores (Q, k) float32, rows (Q, k) int64)``.

        Fewer than ``k`` hits (a tiny index) leave ``None`` ids and row -1.
        """
        q = self._prepare(queries)
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1; got {k}")
        scores, rows = self.index.search(q, min(k, max(self.n, 1)))
        if rows.shape[1] < k:
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=np.nan)
        ids: np.ndarray = np.where(rows >= 0, self.ids[np.clip(rows, 0, None)], None)  # type: ignore[assignment]  # numpy's stubs miss where(cond, x, None)
        return ids, scores.astype(np.float32), rows.astype(np.int64)

    def vector(self, id_: str) -> np.ndarray:
        """The stored vector of an id (normalised for ``cosine``)."""
        hits = np.flatnonzero(self.ids == id_)
        if len(hits) == 0:
            raise KeyError(f"id {id_!r} is not in the index; its ids look like {', '.join(map(repr, self.ids[:3]))}")
        return self.index.reconstruct(int(hits[0]))

    def search_id(
        self, id_: str, k: int = 10, *, exclude_self: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of a stored item (itself left out unless ``exclude_self`` is False)."""
        ids, scores, rows = self.search(self.vector(id_)[None], k + 1 if exclude_self else k)
        if exclude_self:
            keep = ids[0] != id_
            keep = np.flatnonzero(keep)[:k]
            return ids[:, keep], scores[:, keep], rows[:, keep]
        return ids, scores, rows

    def save(self, path: str) -> tuple[str, str]:
        """Write ``path`` (``.faiss``) and its ids table; returns both locations."""
        import faiss

        if not path.endswith(".faiss"):
            raise ValueError(f"an index file name ends in .faiss; got {path}")
        with local_target(path) as tmp:
            faiss.write_index(self.index, tmp)
        meta = {b"nenya_index": json.dumps({"metric": self.metric, "kind": self.kind, **self.params}).encode()}
        if self.about:
            meta[ABOUT_KEY] = json.dumps(self.about).encode()
        table = pa.table({"id": pa.array([str(i) for i in self.ids], pa.string())}).replace_schema_metadata(meta)
        with local_target(ids_path(path)) as tmp:
            pq.write_table(table, tmp)
        return path, ids_path(path)


def _as_array(data: np.ndarray | Latents) -> np.ndarray:
    return data.vectors() if isinstance(data, Latents) else np.asarray(data, dtype=np.float32)


def build_index(
    data: np.ndarray | Latents,
    ids: np.ndarray | list[str] | None = None,
    *,
    kind: str = "auto",
    metric: str = "l2",
    m: int = 32,
    ef_construction: int = 40,
    ef_search: int = 128,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
) -> LatentIndex:
    """Build a FAISS index over latent vectors.

    Args:
        data: (N, D) vectors, or an opened :class:`~nenya.analysis.latents.Latents` (its ids are used).
        ids: one id per row (default: the Latents' ids, else ``"0"``, ``"1"``, ...).
        kind: ``flat`` (exact ``IndexFlatL2``/``IndexFlatIP``), ``hnsw`` (``IndexHNSWFlat``), ``ivf``
            (``IndexIVFFlat``), or ``auto``: flat up to :data:`AUTO_FLAT_MAX` vectors, else HNSW.
        metric: ``l2``, ``ip`` (inner product) or ``cosine`` (inner product of normalised vectors).
        m, ef_construction, ef_search: HNSW graph degree and search breadths (higher: better recall, slower).
        nlist, nprobe: IVF lists (default ~4 sqrt(N)) and lists visited per query (default nlist / 4).
        seed: seed of the IVF training sample.

    Example:
        >>> x = np.random.default_rng(0).standard_normal((1000, 16)).astype("float32")
        >>> idx = build_index(x, kind="flat")
        >>> idx.search(x[:1], 3)[0][0][0]
        '0'
    """
    import faiss

    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if ids is None and isinstance(data, Latents):
        ids = data.ids
    x = np.ascontiguousarray(_as_array(data))
    n, d = x.shape
    ids = np.arange(n).astype(str).astype(object) if ids is None else np.asarray(ids, dtype=object)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} vectors")
    if metric == "cosine":
        x = _normalise(x)
    fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if kind == "auto":
        kind = "flat" if n <= AUTO_FLAT_MAX else "hnsw"
    params: dict = {}
    index: Any  # a flat, HNSW or IVF faiss index
    if kind == "flat":
        index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        index.add(x)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(m), fmetric)
        index.hnsw.efConstruction = int(ef_construction)
        index.hnsw.efSearch = int(ef_search)
        index.add(x)
        params = {"m": int(m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
    else:
        nlist = int(nlist or max(1, min(n // 39, int(4 * np.sqrt(n)))))
        quantizer = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, fmetric)
        rng = np.random.default_rng(seed)
        sample = x if n <= nlist * 256 else x[np.sort(rng.choice(n, nlist * 256, replace=False))]
        index.train(sample)
        index.add(x)
        index.nprobe = int(nprobe or max(1, nlist // 4))
        index.make_direct_map()
        params = {"nlist": nlist, "nprobe": int(index.nprobe)}
    log.info("built a %s index (%s) of %d x %d", kind, metric, n, d)
    return LatentIndex(index, ids, metric, kind, params)


def load_index(path: str, *, ef_search: int | None = None, nprobe: int | None = None) -> LatentIndex:
    """Read ``X.faiss`` and ``X.ids.parquet`` (local or URL)."""
    import faiss

    if not storage.exists(path):
        raise InputError(f"index not found: {path}; build one with `nenya index LATENTS`")
    idp = ids_path(path)
    if not storage.exists(idp):
        raise InputError(f"{path} has no ids table {storage.basename(idp)} next to it; rebuild it with `nenya index`")
    local = storage.fetch(path)
    index: Any = faiss.read_index(local)  # HNSW attributes are not on faiss.Index
    fs, p = storage.url_to_fs(idp)
    with fs.open(p, "rb") as fh:
        table = pq.read_table(fh)
    info = json.loads((table.schema.metadata or {}).get(b"nenya_index", b"{}"))
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    if len(ids) != index.ntotal:
        raise InputError(
            f"{path} holds {index.ntotal} vectors but {storage.basename(idp)} {len(ids)} ids; rebuild the index"
        )
    kind = info.get("kind", "flat")
    if kind == "hnsw" and ef_search:
        index.hnsw.efSearch = int(ef_search)
    if kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        if nprobe:
            ivf.nprobe = int(nprobe)
        ivf.make_direct_map()
    params = {k: v for k, v in info.items() if k not in ("metric", "kind")}
    return LatentIndex(index, ids, info.get("metric", "l2"), kind, params, about_of(table.schema))


def open_index(
    target: str, *, metric: str = "l2", ef_search: int | None = None, nprobe: int | None = None
) -> LatentIndex:
    """What to search: a saved index (``X.faiss``, loaded with :func:`load_index`) or a latents file
    of any layout, indexed exactly (a flat index with ``metric``) with the model it records.

    Args:
        target: a ``.faiss`` file from ``nenya index`` or a latents file (path or URL).
        metric: ``l2``, ``ip`` or ``cosine``, for a latents file (a saved index keeps its own).
        ef_search, nprobe: HNSW search breadth and IVF lists visited, overriding a saved index's.

    Example:
        >>> index = open_index("x_latents.h5", metric="cosine")   # doctest: +SKIP
        >>> ids, scores, rows = index.search_id("valid/0", 5)     # doctest: +SKIP
    """
    if target.endswith(".faiss"):
        return load_index(target, ef_search=ef_search, nprobe=nprobe)
    with open_latents(target, metadata=False) as lat:
        index = build_index(lat, kind="flat", metric=metric)
    index.about = read_about(target)  # so queries by image are encoded as the latents were
    return index


def encode_query_image(
    path: str,
    spec: str,
    *,
    opt: str | None = None,
    trust_checkpoint: bool = False,
    options: EncoderOptions | None = None,
) -> np.ndarray:
    """The latent vector (1, dim) of one query image, by the model that made the latents.

    For SupCon/Nenya models the image is a ``.npy`` cutout, (H, W) or (C, H, W); for photo models
    (timm, torchvision, ...) an image file decoded and resized as extraction does.
    ``options`` are the photo-model options (size, pool, ...) the latents were made with: see
    :func:`nenya.analysis.latents.read_about` and :func:`nenya.encoders.base.options_from_about`.
    :class:`nenya.analysis.query.QueryEncoder` keeps the model loaded for many queries.
    """
    from nenya.analysis.query import QueryEncoder

    return QueryEncoder(spec, opt=opt, trust_checkpoint=trust_checkpoint, options=options).encode_file(path)
