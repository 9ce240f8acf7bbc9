"""``.npy`` vectors plus a Parquet table of ids and metadata in the same row order (what FAISS tools read)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.compute as pc

from nenya.pipeline import faults, storage
from nenya.pipeline.items import Group
from nenya.sinks import vectors_of
from nenya.sinks.parquet import ParquetSink


def metadata_name(npy_name: str) -> str:
    """``vectors.npy`` -> ``vectors.parquet``: the table that describes the rows of the array."""
    stem = npy_name[:-4] if npy_name.endswith(".npy") else npy_name
    return stem + ".parquet"


class NpySink(ParquetSink):
    """``<name>.npy``: (N, dim) float32 (float16 on request), row i described by row i of
    ``<name>.parquet`` (``id``, metadata, ``tile_x``/``tile_y`` for tiles; no vector column).
    Skipped items are left out of both. With ``append=True`` the existing rows come first."""

    ext = ".npy"
    with_vectors = False

    def table_name(self, group: Group) -> str:
        return metadata_name(self.output_name(group))

    def table_name_of(self, output_name: str) -> str:
        return metadata_name(output_name)

    def assemble_files(self, group: Group) -> list[tuple[str, str]]:
        gdir = self.group_dir(group)
        meta_name = metadata_name(self.output_name(group))
        meta_local = storage.tmp_name(os.path.join(gdir, meta_name))
        npy_local = storage.tmp_name(os.path.join(gdir, self.output_name(group)))
        old_vectors = None
        previous = self.previous(group, meta_name)
        if previous is not None:
            dest = storage.join(self.output, self.output_name(group))
            old_vectors = np.load(storage.fetch(dest) if storage.is_remote(dest) else dest, mmap_mode="r")
            if len(old_vectors) != previous.metadata.num_rows:
                raise AssertionError(f"{dest} has {len(old_vectors)} rows but {meta_name} {previous.metadata.num_rows}")
        n_old = 0 if old_vectors is None else len(old_vectors)
        n_new = self.kept_rows(group)
        rows = self.write_parquet(group, meta_local, previous)
        dtype = np.float32 if self.dtype == "float32" else np.float16
        out = np.lib.format.open_memmap(npy_local, mode="w+", dtype=dtype, shape=(n_old + n_new, self._dim))
        at = 0
        if old_vectors is not None:
            for a in range(0, n_old, 65536):
                out[a : min(a + 65536, n_old)] = old_vectors[a : a + 65536]
            at = n_old
        for p in group.partitions:
            for part in self.parts(group, p):
                t = self.read_part(part)
                t = t.filter(pc.equal(t.column("status"), "ok"))
                v = vectors_of(t)
                out[at : at + len(v)] = v
                at += len(v)
                faults.point("assemble.write")
        out.flush()
        del out
        if at != rows:
            raise AssertionError(f"{at} vectors but {rows} metadata rows for {self.output_name(group)}")
        return [(meta_local, meta_name), (npy_local, self.output_name(group))]

    def assemble(self, group: Group, path: str) -> None:  # pragma: no cover - assemble_files is used
        raise NotImplementedError
