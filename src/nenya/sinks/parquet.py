"""Parquet latents: one row per item with id, partition, row, metadata columns and ``vector``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nenya.pipeline.items import Group
from nenya.sinks._parts import PartSink, vectors_of


class ParquetSink(PartSink):
    """One Parquet file per input group (``<name>_latents.parquet``).

    Columns: ``id`` (string), ``partition`` (string), ``row`` (int64, row in the input), the
    input's metadata columns (strings, as stored), and ``vector``: a fixed-size list of float32
    (float16 with ``dtype="float16"``). Skipped items are left out and listed in ``.skipped.csv``.
    """

    ext = ".parquet"

    def __init__(self, output, *, overwrite: bool = False, dtype: str = "float32") -> None:
        super().__init__(output, overwrite=overwrite)
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self.dtype = dtype

    def _schema_tag(self) -> str:
        return self.dtype

    def assemble(self, group: Group, path: str) -> None:
        writer = None
        vtype = pa.float32() if self.dtype == "float32" else pa.float16()
        try:
            for p in group.partitions:
                for part in self.parts(group, p):
                    t = self.read_part(part)
                    t = t.filter(pc.equal(t.column("status"), "ok"))
                    vec = vectors_of(t).astype(np.float32 if self.dtype == "float32" else np.float16)
                    cols = {"id": t.column("id"), "partition": t.column("partition"), "row": t.column("row")}
                    for name in t.column_names:
                        if name.startswith("meta:"):
                            cols[name[5:]] = t.column(name)
                    cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1), vtype), self._dim)
                    out = pa.table(cols)
                    if writer is None:
                        writer = pq.ParquetWriter(path, out.schema, compression="zstd")
                    elif out.schema != writer.schema:
                        out = out.cast(writer.schema) if set(out.column_names) == set(writer.schema.names) else out
                    writer.write_table(out)
            if writer is None:  # nothing at all: still a valid, empty file with the schema
                vec = pa.FixedSizeListArray.from_arrays(pa.array([], vtype), self._dim)
                empty = pa.table({"id": pa.array([], pa.string()), "partition": pa.array([], pa.string()),
                                  "row": pa.array([], pa.int64()), "vector": vec})
                pq.write_table(empty, path)
        finally:
            if writer is not None:
                writer.close()
