"""Shard parts: the unit of commit shared by the file sinks (:class:`PartSink`).

Each committed shard is one Arrow IPC file in a work folder next to the output
(``<output>/.nenya-work/<output name>/``; in the cache for remote outputs), written under a
temporary name, fsynced and renamed, followed by a ``.done.json`` marker with counts and
timings (:mod:`nenya.sinks.partfiles`). A manifest holds the run's fingerprint (inputs, model
weights, preprocessing, output schema) so a rerun continues only when it would produce the same
output (:mod:`nenya.sinks.manifest`), and a lock (``flock``, released by the kernel when the
process dies) refuses a second run writing the same output (:mod:`nenya.sinks.locks`).
Final files are assembled from the parts in plan order and published atomically, with a status
table (``<output>.status.csv``: every id once, ``ok`` or ``skipped:<reason>``;
:mod:`nenya.sinks.status`); the work folder then goes. With ``append=True`` the rows of an
existing output come first (resume by id).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from abc import abstractmethod
from collections import defaultdict
from typing import IO, ClassVar

import numpy as np
import pyarrow as pa

from nenya._errors import InputError, OutputError
from nenya.pipeline import faults, storage
from nenya.pipeline.items import Batch, Group, Plan, Shard
from nenya.sinks import Sink, WriteContext, locks, notes, partfiles
from nenya.sinks.locks import LockHolder
from nenya.sinks.manifest import check_manifest, check_same_vectors, vectors_digest, write_manifest
from nenya.sinks.status import STATUS_SUFFIX, read_status, write_status

log = logging.getLogger(__name__)

WORK = ".nenya-work"

__all__ = ["WORK", "PartSink"]


class PartSink(Sink):
    """Base of sinks that commit shard parts and assemble one output file per group.

    A subclass implements :meth:`assemble` (or :meth:`assemble_files` for several files), reading
    the committed parts of a group with :meth:`parts` and :meth:`read_part`.

    Args:
        output: output folder, local path or URL.
        overwrite: replace existing outputs and discard work of a different configuration.
        append: add after the rows of an existing output (set by :meth:`resume_ids` when there is one).
        name: the output's file name (one group only); default: each group's name, ``suffix`` and :attr:`ext`.
        suffix: added to each group's name before the extension (``_debug`` for debug runs).
    """

    schema_version = "1"
    collections: ClassVar[bool] = True
    supports_ranks: ClassVar[bool] = True
    supports_tiles = True

    def __init__(
        self,
        output: str | os.PathLike,
        *,
        overwrite: bool = False,
        append: bool = False,
        name: str | None = None,
        suffix: str = "",
    ) -> None:
        self.output = str(output)
        self.overwrite = overwrite
        self.append = append
        self.name = storage.safe_name(name) if name else None
        self.suffix = suffix
        if storage.is_remote(self.output):
            key = hashlib.sha256(self.output.encode()).hexdigest()[:16]
            self.work = str(storage.cache_dir() / "work" / key)
        else:
            self.output = storage.local_path(self.output)
            self.work = os.path.join(self.output, WORK)
        self._buffers: dict[tuple[str, str], list[tuple[Batch, np.ndarray]]] = defaultdict(list)
        self._plan: Plan | None = None
        self._dim = 0
        self._tiles = 1
        self._grid: tuple[int, int] | None = None
        self._t0: dict[tuple[str, str], float] = {}
        self._locks: list[tuple[str, IO[str]]] = []
        self.rank, self.world, self.job = 0, 1, ""  # from the WriteContext given to start()

    # -- names and locations ------------------------------------------------------------
    def output_name(self, group: Group) -> str:
        """The file name of ``group``'s output: the sink's own name, or the group's name + suffix + ext."""
        return self.output_name_for(group.name)

    def output_name_for(self, stem: str) -> str:
        return self.name or storage.safe_name(stem + self.suffix + self.ext)

    def unfinished(self) -> set[str]:
        """Outputs whose work folder is still there: killed while publishing, to be finished again."""
        return set(os.listdir(self.work)) if os.path.isdir(self.work) else set()

    def tidy(self) -> None:
        """Remove an empty work folder: a run killed after its last output, before it removed the folder."""
        partfiles.remove_if_empty(self.work)

    def output_path(self, group: Group) -> str:
        return storage.join(self.output, self.output_name(group))

    def status_path(self, group: Group) -> str:
        return self.output_path(group) + STATUS_SUFFIX

    def group_dir(self, group: Group) -> str:
        return os.path.join(self.work, self.output_name(group))

    def resume_ids(self) -> set[str]:
        """Ids the existing output (``name``) already accounts for: its status table, else its ``id``
        column. When there are any, new rows are appended after the existing ones."""
        if self.name is None or self.overwrite:
            return set()
        dest = storage.join(self.output, self.name)
        if not storage.exists(dest):
            return set()
        rows = read_status(dest + STATUS_SUFFIX)
        ids = {i for i, _ in rows} if rows else self._ids_in_output(dest)
        self.append = self.append or bool(ids)
        return ids

    def _ids_in_output(self, dest: str) -> set[str]:
        """The ``id`` column of an existing output without a status table (formats that have one)."""
        return set()

    def check_existing(self, name: str, context: WriteContext) -> None:
        check_same_vectors(storage.join(self.output, name), self.recorded_model(name), context)

    # -- coordination between the ranks of one job ----------------------------------------
    def lock_holder(self, group: Group, rank: int) -> LockHolder | None:
        """Who took rank ``rank``'s lock on ``group`` in this run (None: not taken since ``since``)."""
        return locks.read_holder(locks.rank_lock_name(self.group_dir(group), rank))

    def post(self, group: Group, name: str, body: dict) -> None:
        """Leave a small JSON note next to ``group``'s parts (ranks tell rank 0 they finished)."""
        notes.post(notes.note_path(self.group_dir(group), name), body)

    def read_post(self, group: Group, name: str) -> dict | None:
        return notes.read(notes.note_path(self.group_dir(group), name))

    def remove_post(self, group: Group, name: str) -> None:
        notes.remove(notes.note_path(self.group_dir(group), name))

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, plan: Plan, context: WriteContext) -> set[tuple[str, str]]:
        dim, fingerprint, grid, about = context.dim, context.fingerprint, context.grid, context.about
        self.rank, self.world, self.job = context.rank, context.world, context.job
        self._check_names(plan)
        self._plan, self._dim, self._grid = plan, dim, grid
        # the model's description, with a digest of what determines the vectors (model, weights,
        # preprocessing, precision): outputs carry it, and appending to an output checks it
        self._about = {**(about or {}), "vectors": vectors_digest(fingerprint)}
        self._tiles = grid[0] * grid[1] if grid else 1
        if grid and not self.supports_tiles:
            raise OutputError(
                f"{type(self).__name__} stores one vector per item; tile vectors (--pool none) "
                "need --format parquet or npy"
            )
        self._check_output_folder()
        done: set[tuple[str, str]] = set()
        os.makedirs(self.work, exist_ok=True)
        for g in plan.groups:
            done |= self._open_group(g, fingerprint)
        return done

    def _check_output_folder(self) -> None:
        """A local output folder exists and is writable (an OutputError that says so otherwise)."""
        if not storage.is_remote(self.output):
            try:
                os.makedirs(self.output, exist_ok=True)
            except OSError as e:
                raise OutputError(
                    f"cannot create output folder {self.output}: {e.strerror}; choose a writable location"
                ) from None
            if not os.access(self.output, os.W_OK):
                raise OutputError(f"output folder {self.output} is not writable; choose another with --output")

    def _open_group(self, g: Group, fingerprint: str) -> set[tuple[str, str]]:
        """Lock ``g``'s parts folder, check or write its manifest, clean orphans; its committed shards."""
        gdir = self.group_dir(g)
        locks.lock_group(gdir, self.rank, self.world, self.job, self._locks)
        fp = (
            f"{fingerprint}|{g.fingerprint}|{type(self).__name__}|{self.schema_version}|{self._schema_tag()}"
            f"|grid={self._grid}|append={self.append}"
        )
        check_manifest(gdir, fp, overwrite=self.overwrite, rank=self.rank)
        os.makedirs(gdir, exist_ok=True)
        # orphans of a killed run; with several ranks another rank's temporaries may be live: they
        # go when rank 0 publishes and removes the work folder
        if self.world == 1:
            partfiles.remove_temporaries(gdir)
        write_manifest(gdir, fp, self.output_path(g), g.url)
        return {(g.key, key) for key in partfiles.committed_keys(gdir)}

    def _check_names(self, plan: Plan) -> None:
        if self.name is not None and len(plan.groups) > 1:
            raise InputError(
                f"{len(plan.groups)} inputs cannot all be written to one file {self.name!r}; give an output folder"
            )
        names = [self.output_name(g) for g in plan.groups]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise InputError(
                f"several inputs would write the same output {sorted(dup)[0]!r}; give files with distinct names"
            )

    def _schema_tag(self) -> str:
        return ""

    def write(self, batch: Batch, vectors: np.ndarray) -> None:
        key = (batch.shard.group, batch.shard.key)
        self._t0.setdefault(key, time.perf_counter())
        self._buffers[key].append((batch, vectors))

    def commit(self, shard: Shard) -> None:
        assert self._plan is not None
        group = self._plan.group(shard.group)
        key = (shard.group, shard.key)
        items = self._buffers.pop(key, [])
        table = partfiles.part_table(items, self._dim, self._tiles, self._grid)
        if table.num_rows != len(shard) * self._tiles:
            raise AssertionError(
                f"shard {shard.key} of {group.url}: {table.num_rows} rows written, {len(shard) * self._tiles} planned"
            )
        gdir = self.group_dir(group)
        final = os.path.join(gdir, shard.key + partfiles.PART)
        with storage.disk_errors(final, dest=self.output_path(group)):
            partfiles.write_part(final, table)
            faults.point("part.renamed")
            seconds = round(time.perf_counter() - self._t0.pop(key, time.perf_counter()), 4)
            partfiles.write_done(os.path.join(gdir, shard.key + partfiles.DONE), shard, table, self._tiles, seconds)
        faults.point("marker.written")

    def committed(self) -> set[tuple[str, str]]:
        """The (group, shard key) pairs of the plan whose done marker exists (any process's)."""
        assert self._plan is not None
        dirs = {g.key: self.group_dir(g) for g in self._plan.groups}
        return {
            (s.group, s.key)
            for s in self._plan.shards
            if os.path.exists(os.path.join(dirs[s.group], s.key + partfiles.DONE))
        }

    def item_counts(self) -> tuple[int, int]:
        """(items, skipped items) of the plan's committed shards, from their done markers."""
        assert self._plan is not None
        dirs = {g.key: self.group_dir(g) for g in self._plan.groups}
        return partfiles.counts(os.path.join(dirs[s.group], s.key + partfiles.DONE) for s in self._plan.shards)

    def parts(self, group: Group, partition: str) -> list[str]:
        """Committed part files of a partition, in plan order."""
        assert self._plan is not None
        gdir = self.group_dir(group)
        keys = [s.key for s in self._plan.shards if s.group == group.key and s.partition == partition]
        return [os.path.join(gdir, k + partfiles.PART) for k in keys]

    def kept_rows(self, group: Group) -> int:
        """Rows the output of ``group`` will hold (items ``ok``, times tiles), from the done markers."""
        total = sum(partfiles.kept_items(part) for p in group.partitions for part in self.parts(group, p))
        return total * self._tiles

    @staticmethod
    def read_part(path: str) -> pa.Table:
        return partfiles.read_part(path)

    def finish(self) -> list[str]:
        assert self._plan is not None
        outputs = []
        try:
            committed = self.committed()
            for g in self._plan.groups:
                missing = [s.key for s in self._plan.shards if s.group == g.key and (s.group, s.key) not in committed]
                if missing:
                    continue  # an interrupted run: the parts stay for the next one
                outputs.append(self._finish_group(g))
        finally:
            self._unlock()
        partfiles.remove_if_empty(self.work)
        return outputs

    def _finish_group(self, g: Group) -> str:
        gdir = self.group_dir(g)
        dest = self.output_path(g)
        files = []  # (local temporary file, final location), published in this order: the output last
        try:
            with storage.disk_errors(gdir, dest=dest):
                status = self._status_file(g)
                files.append((status, self.status_path(g)))
                for local, name in self.assemble_files(g):
                    files.append((local, storage.join(self.output, name)))
                faults.point("publish.before")
                for local, final in files[1:] + files[:1]:  # the status table once every output is in place
                    storage.remove_stale_tmp(final)  # a copy a run killed while publishing left (we hold the lock)
                    storage.publish(local, final)
                faults.point("publish.after")
        finally:
            for local, _ in files:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(local)
        shutil.rmtree(gdir, ignore_errors=True)
        return dest

    def assemble_files(self, group: Group) -> list[tuple[str, str]]:
        """Write the final files of ``group`` in its work folder; return (local path, output name)
        pairs, the main output last. One file by default (:meth:`assemble`)."""
        local = storage.tmp_name(os.path.join(self.group_dir(group), self.output_name(group)))
        self.assemble(group, local)
        return [(local, self.output_name(group))]

    def _status_file(self, group: Group) -> str:
        """``<output>.status.csv``: every item's id once, ``ok`` or ``skipped:<reason>`` (previous rows first
        when appending)."""
        local = storage.tmp_name(os.path.join(self.group_dir(group), self.output_name(group) + STATUS_SUFFIX))
        parts = (self.read_part(path) for p in group.partitions for path in self.parts(group, p))
        skipped = write_status(local, parts, self._tiles, self.status_path(group) if self.append else None)
        if skipped:
            log.warning(
                "%d item(s) of %s skipped; see %s%s",
                skipped,
                storage.redact(group.url),
                self.output_name(group),
                STATUS_SUFFIX,
            )
        return local

    def abort(self) -> None:
        self._buffers.clear()
        self._unlock()

    def _unlock(self) -> None:
        locks.release(self._locks)

    @abstractmethod
    def assemble(self, group: Group, path: str) -> None:
        """Write the final output of ``group`` to the local path ``path``."""
