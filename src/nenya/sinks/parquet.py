"""Parquet latents: one row per item (per tile for tile encoders) with ids, metadata and ``vector``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nenya.pipeline import faults, storage
from nenya.pipeline.items import Group
from nenya.sinks import WriteContext, vectors_of
from nenya.sinks.parts import PartSink

#: schema-metadata key (Parquet) and attribute (HDF5) holding :meth:`Encoder.about` as JSON
ABOUT_KEY = b"nenya"


def parse_about(raw: str | bytes | None) -> dict | None:
    """The model description from its stored JSON (None when absent or unreadable)."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def about_of(schema: pa.Schema | None) -> dict | None:
    """The model description stored in a Parquet schema by nenya (None for other files)."""
    return parse_about((schema.metadata or {}).get(ABOUT_KEY) if schema is not None else None)


class ParquetSink(PartSink):
    """One Parquet file per input group.

    Columns: ``id`` (string); for Nenya preproc inputs ``partition`` (string) and ``row`` (int64,
    row in the input); the input's metadata columns (for image sources ``path`` first; table
    columns keep their type); ``tile_x``/``tile_y`` (int32) for tile encoders, an image's tiles
    together and in row-major order; and ``vector``: a fixed-size list of float32 (float16 with
    ``dtype="float16"``). Skipped items are left out; the status table lists them with the reason.
    With ``append=True`` the rows of an existing output come first (resume by id).
    """

    ext = ".parquet"
    with_vectors = True

    def __init__(
        self,
        output,
        *,
        overwrite: bool = False,
        append: bool = False,
        name: str | None = None,
        suffix: str = "",
        dtype: str = "float32",
    ) -> None:
        super().__init__(output, overwrite=overwrite, append=append, name=name, suffix=suffix)
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self.dtype = dtype

    def _schema_tag(self) -> str:
        return self.dtype

    def table_name(self, group: Group) -> str:
        """The Parquet file of ``group`` (the output itself; the ids-and-metadata file for npy)."""
        return self.output_name(group)

    def _ids_in_output(self, dest: str) -> set[str]:
        table = storage.join(self.output, self.table_name_of(self.name or ""))
        return set(pq.read_table(storage.fetch(table), columns=["id"]).column("id").to_pylist())

    def table_name_of(self, output_name: str) -> str:
        """The Parquet file that lists an output's ids (the output itself here)."""
        return output_name

    def start(self, plan, context: WriteContext):
        self._check_names(plan)
        if self.append:  # resume by id: only vectors of the same model may join
            for g in plan.groups:
                self.check_existing(self.output_name(g), context)
        return super().start(plan, context)

    def recorded_model(self, name: str) -> dict | None:
        """The model record in the schema of the output ``name`` (of its ids table for npy)."""
        dest = storage.join(self.output, self.table_name_of(name))
        if not storage.exists(dest):
            return None
        fs, path = storage.url_to_fs(dest)
        try:
            with fs.open(path, "rb") as f:
                return about_of(pq.read_schema(f))
        except (OSError, ValueError):  # not a Parquet file: nothing recorded
            return None

    def _with_about(self, schema: pa.Schema) -> pa.Schema:
        return schema.with_metadata({**(schema.metadata or {}), ABOUT_KEY: json.dumps(self._about).encode()})

    def _vtype(self) -> pa.DataType:
        return pa.float32() if self.dtype == "float32" else pa.float16()

    def output_table(self, group: Group, part: pa.Table) -> pa.Table:
        """A committed part (all items) -> the rows and columns of the output (kept items only)."""
        t = part.filter(pc.equal(part.column("status"), "ok"))
        cols = {"id": t.column("id")}
        if any(group.partitions):  # Nenya preproc partitions: say where each row came from
            cols["partition"] = t.column("partition")
            cols["row"] = t.column("row")
        for name in t.column_names:
            if name.startswith("meta:"):
                cols[name[5:]] = t.column(name)
        if "tile_x" in t.column_names:
            cols["tile_x"] = t.column("tile_x")
            cols["tile_y"] = t.column("tile_y")
        if self.with_vectors:
            vec = vectors_of(t).astype(np.float32 if self.dtype == "float32" else np.float16)
            cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1), self._vtype()), self._dim)
        return pa.table(cols)

    def previous(self, group: Group, name: str | None = None) -> pq.ParquetFile | None:
        """The existing output (when appending), or None."""
        dest = storage.join(self.output, name or self.output_name(group))
        if not self.append or not storage.exists(dest):
            return None
        return pq.ParquetFile(storage.fetch(dest) if storage.is_remote(dest) else dest)

    def write_parquet(self, group: Group, path: str, previous: pq.ParquetFile | None) -> int:
        """Stream the previous rows (if any) then every committed part into ``path``; return the row count."""
        writer = None
        rows = 0
        try:
            if previous is not None:
                writer = pq.ParquetWriter(path, previous.schema_arrow, compression="zstd")
                for rb in previous.iter_batches():
                    writer.write_table(pa.Table.from_batches([rb], previous.schema_arrow))
                    rows += rb.num_rows
            for p in group.partitions:
                for part in self.parts(group, p):
                    out = self.output_table(group, self.read_part(part))
                    if writer is None:
                        writer = pq.ParquetWriter(path, self._with_about(out.schema), compression="zstd")
                    elif out.schema != writer.schema:
                        out = out.select(writer.schema.names).cast(writer.schema)
                    writer.write_table(out)
                    rows += out.num_rows
                    faults.point("assemble.write")
            if writer is None:  # nothing at all: still a valid, empty file with the schema
                cols = {"id": pa.array([], pa.string())}
                if self.with_vectors:
                    cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array([], self._vtype()), self._dim)
                table = pa.table(cols)
                pq.write_table(table.replace_schema_metadata(self._with_about(table.schema).metadata), path)
        finally:
            if writer is not None:
                writer.close()
        return rows

    def assemble(self, group: Group, path: str) -> None:
        self.write_parquet(group, path, self.previous(group))
