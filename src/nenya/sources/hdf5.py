"""Nenya preprocessed HDF5 files: ``valid``/``train`` cutouts, optional ``*_metadata`` tables."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence

import numpy as np

from nenya._errors import InputError
from nenya.pipeline import storage
from nenya.pipeline.items import Batch, Group, Plan, Shard
from nenya.sources import Source
from nenya.sources.h5files import (
    LazyH5,
    as_strings,
    check_images,
    metadata_blocks,
    metadata_columns,
    metadata_kinds,
    open_checked,
    read_rows,
    typed_column,
)

DEFAULT_PARTITIONS = ("train", "valid")


def latents_name(preproc_name: str, ext: str = ".h5") -> str:
    """``X_preproc_Y.h5`` -> ``X_latents_Y.h5``; without ``_preproc``, ``X.h5`` -> ``X_latents.h5``."""
    return latents_stem(preproc_name) + ext


def latents_stem(preproc_name: str) -> str:
    """``X_preproc_Y.h5`` -> ``X_latents_Y``: the name a preproc file proposes for its output."""
    base = storage.basename(preproc_name)
    stem, dot, _ = base.rpartition(".")
    stem = stem if dot else base
    if "_preproc" in stem:
        return stem.replace("_preproc", "_latents")
    return stem + "_latents"


class HDF5PreprocSource(Source):
    """Cutouts of one or more preproc files, one output group per file.

    Args:
        files: local paths or URLs; remote files are fetched to a temporary folder for the
            run and removed by :meth:`close` (the user's files are never touched).
        partitions: partitions to read, in this order, where present.
        allowed_indices: rows to read from every partition (sorted; Nenya's ``allowed_indices``).
        limit: read at most this many items per partition (``debug`` runs).
        typed_metadata: give the ``*_metadata`` columns as numbers and times where every value is
            one (:func:`~nenya.sources.h5files.metadata_kinds`, told from all the rows of every
            partition read, so a column has one type in every shard); False: Nenya's text as stored.
    """

    def __init__(
        self,
        files: Sequence[str],
        *,
        partitions: Sequence[str] = DEFAULT_PARTITIONS,
        allowed_indices: Sequence[int] | np.ndarray | None = None,
        limit: int | None = None,
        typed_metadata: bool = True,
    ) -> None:
        if isinstance(files, (str, os.PathLike)):
            files = [str(files)]
        self.files = [str(f) for f in files]
        self.partitions = tuple(partitions)
        self.allowed = None if allowed_indices is None else np.unique(np.asarray(allowed_indices, dtype=np.int64))
        self.limit = limit
        self.typed_metadata = typed_metadata
        self._kinds: dict[str, dict[str, str]] = {}
        self._local: dict[str, LazyH5] = {}
        self._selection: dict[tuple[str, str], np.ndarray | None] = {}
        self._tmpdir: str | None = None

    @classmethod
    def output_stem(cls, url: str) -> str:
        """``X_preproc_Y.h5`` -> ``X_latents_Y``; ``X.h5`` -> ``X_latents`` (:func:`latents_stem`)."""
        return latents_stem(url)

    # -- planning (main process) --------------------------------------------------------
    def _fetch(self, url: str) -> str:
        if not storage.is_remote(url):
            return storage.local_path(url)
        if self._tmpdir is None:
            self._tmpdir = storage.make_tempdir("nenya-fetch-")
        return storage.fetch(url, into=os.path.join(self._tmpdir, str(len(self._local))))

    def plan(self, shard_size: int) -> Plan:
        groups, shards = [], []
        for url in self.files:
            lazy = self._local.get(url) or LazyH5(self._fetch(url))
            self._local[url] = lazy
            with open_checked(lazy.path) as f:
                present = [p for p in self.partitions if p in f]
                if not present:
                    raise InputError(
                        f"{url} has none of the partitions {list(self.partitions)}; "
                        f"it holds {sorted(f.keys())}. Choose partitions with --partitions"
                    )
                sizes, meta_cols, shapes = {}, {}, []
                for p in present:
                    dset = f[p]
                    check_images(url, p, dset)
                    n = dset.shape[0]
                    sel = None
                    if self.allowed is not None:
                        if len(self.allowed) and (self.allowed[0] < 0 or self.allowed[-1] >= n):
                            raise InputError(
                                f"allowed_indices go up to {int(self.allowed[-1])} but {url}:{p} has {n} rows"
                            )
                        sel = self.allowed
                        n = len(sel)
                    if self.limit is not None:
                        n = min(n, self.limit)
                    self._selection[(url, p)] = sel
                    sizes[p] = n
                    meta_cols[p] = metadata_columns(f, p)
                    shapes.append(f"{p}{dset.shape}{dset.dtype}")
                    for i, start in enumerate(range(0, n, shard_size)):
                        shards.append(Shard(url, p, i, start, min(n, start + shard_size)))
                self._type_metadata(url, f, meta_cols)
            size = os.path.getsize(lazy.path)
            fp = f"{storage.basename(url)}|{size}|{';'.join(shapes)}|sel={self._sel_digest()}|limit={self.limit}"
            groups.append(Group(url, url, self.output_stem(url), sizes, meta_cols, fp))
        return Plan(groups, shards)

    def _type_metadata(self, url: str, f, columns: dict[str, list[str]]) -> None:
        """One type per metadata column of the file ``url``, told from every row of the partitions read."""
        if self.typed_metadata:
            tables = (t for p, cols in columns.items() if cols for t in metadata_blocks(f[f"{p}_metadata"], cols))
            self._kinds[url] = metadata_kinds(tables)

    def _sel_digest(self) -> str:
        if self.allowed is None:
            return "all"
        import hashlib

        return hashlib.sha256(self.allowed.tobytes()).hexdigest()[:16]

    # -- reading (any process) ----------------------------------------------------------
    def read(self, shard: Shard, batch_size: int) -> Iterator[Batch]:
        f = self._local[shard.group].file
        dset = f[shard.partition]
        meta = f.get(f"{shard.partition}_metadata")
        cols = metadata_columns(f, shard.partition)
        kinds = self._kinds.get(shard.group, {})
        sel = self._selection.get((shard.group, shard.partition))
        for a in range(shard.start, shard.stop, batch_size):
            b = min(shard.stop, a + batch_size)
            positions = np.arange(a, b, dtype=np.int64)
            rows = positions if sel is None else sel[a:b]
            data = read_rows(dset, rows)
            if data.ndim == 3:
                data = data[:, None]
            if data.dtype != np.float32:
                data = data.astype(np.float32)
            metadata = {}
            if cols:
                table = as_strings(read_rows(meta, rows))
                metadata = {c: typed_column(table[:, j], kinds.get(c, "str")) for j, c in enumerate(cols)}
            ids = [f"{shard.partition}/{r}" for r in rows.tolist()]
            yield Batch(shard, ids, positions, rows, data, metadata, last=b >= shard.stop)

    def localise(self) -> None:
        """Files the planning process fetched from URLs: fetch them into this node's cache too."""
        for url, lazy in self._local.items():
            if storage.is_remote(url) and not os.path.exists(lazy.path):
                lazy.path = storage.fetch(url)

    def close(self) -> None:
        for lazy in self._local.values():
            lazy.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)  # only the copies this source made
            self._tmpdir = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tmpdir"] = None  # workers never delete the fetch folder
        return state
