"""Lance datasets (``-o vectors.lance``): what LanceDB opens and searches as it is.

The rows and columns are the Parquet sink's (``id``, metadata, ``tile_x``/``tile_y``, and ``vector``:
a fixed-size list of float32), and so is the work: each shard is committed as a part in the work
folder; when every shard is done, the parts go into the dataset in **one** Lance commit (a new
version, visible only once complete), then the status table ``<name>.lance.status.csv`` is
published and the work folder removed. A run killed before that commit leaves the dataset as it
was (its parts stay for the rerun); one killed after it finds the parts' ids already in the
dataset on the rerun and does not add them twice. Resume by id appends a new version after the
existing rows. The model's record is in the schema metadata (``nenya`` key), as in Parquet.
Local outputs only: write the dataset locally, then copy it where LanceDB reads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

import pyarrow as pa

from nenya._errors import OutputError
from nenya.pipeline import faults, storage
from nenya.pipeline.items import Group
from nenya.sinks.parquet import ParquetSink, about_of

log = logging.getLogger(__name__)

__all__ = ["LanceSink"]


def _lance():
    import warnings

    # lance warns when a process that used it forks; the forked readers never touch lance
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    try:
        import lance
    except ImportError:
        raise OutputError('writing Lance datasets needs pylance: pip install "nenya[lance]"') from None
    return lance


def _committed(dest: str) -> bool:
    """Whether ``dest`` holds a Lance dataset with a committed version. Lance writes in place and commits
    by writing a manifest under ``_versions/``: a run killed during its first write leaves data files
    and no version, which no reader can open (the next run writes the dataset anew)."""
    versions = os.path.join(dest, "_versions")
    return os.path.isdir(versions) and any(os.scandir(versions))


class LanceSink(ParquetSink):
    """A Lance dataset per group (see the module docstring); ``dtype`` float32 or float16."""

    ext = ".lance"

    def __init__(self, output, **kwargs) -> None:
        if storage.is_remote(str(output)):
            raise OutputError(
                f"Lance outputs are written locally ({output} is a URL): write vectors.lance to a local "
                "folder, then copy the dataset folder where LanceDB reads it"
            )
        super().__init__(output, **kwargs)

    def _ids_in_output(self, dest: str) -> set[str]:
        if not _committed(dest):
            return set()
        ds = _lance().dataset(dest)
        return set(ds.to_table(columns=["id"]).column("id").to_pylist())

    def recorded_model(self, name: str) -> dict | None:
        dest = storage.join(self.output, name)
        return about_of(_lance().dataset(dest).schema) if _committed(dest) else None

    def _rows(self, group: Group):
        """The committed parts of ``group`` as output tables, one at a time."""
        for p in group.partitions:
            for part in self.parts(group, p):
                yield self.output_table(group, self.read_part(part))

    def _already_in(self, dest: str, group: Group) -> bool:
        """Whether a previous run committed these parts before it was killed: their first id is there."""
        first = next((t.column("id")[0].as_py() for t in self._rows(group) if t.num_rows), None)
        if first is None or not _committed(dest):
            return False
        import pyarrow.compute as pc

        ids = _lance().dataset(dest).to_table(columns=["id"]).column("id")
        return bool(pc.any(pc.equal(ids, first)).as_py())

    def _write_dataset(self, group: Group, dest: str) -> None:
        tables = [t for t in self._rows(group)]
        if tables:
            schema = self._with_about(tables[0].schema)
            tables = [t.select(schema.names).cast(schema) for t in tables]
        else:  # nothing kept: still a dataset with the schema
            cols = {
                "id": pa.array([], pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array([], self._vtype()), self._dim),
            }
            empty = pa.table(cols)
            schema, tables = self._with_about(empty.schema), [empty]
        reader = pa.RecordBatchReader.from_batches(schema, (b for t in tables for b in t.cast(schema).to_batches()))
        # "create" for a new dataset: lance warns "No existing dataset ... will be created" on the others
        # ("overwrite" also over the data files of a first write that was killed before its commit)
        mode = ("append" if self.append else "overwrite") if _committed(dest) else "create"
        if mode == "create" and os.path.isdir(dest):
            shutil.rmtree(dest)
        _lance().write_dataset(reader, dest, schema=schema, mode=mode)
        faults.point("assemble.write")

    def _finish_group(self, g: Group) -> str:
        gdir = self.group_dir(g)
        dest = self.output_path(g)
        status = None
        try:
            with storage.disk_errors(gdir, dest=dest):
                status = self._status_file(g)
                faults.point("publish.before")
                if self._already_in(dest, g):
                    log.info("%s already holds this run's rows (committed before an interruption)", dest)
                else:
                    self._write_dataset(g, dest)
                storage.remove_stale_tmp(self.status_path(g))  # left by a run killed while publishing it
                storage.publish(status, self.status_path(g))
                faults.point("publish.after")
        finally:
            if status is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(status)
        shutil.rmtree(gdir, ignore_errors=True)
        return dest
