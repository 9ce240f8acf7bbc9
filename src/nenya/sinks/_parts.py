"""Shard parts: the unit of commit shared by the file sinks.

Each committed shard is one Arrow IPC file in a work folder next to the output
(``<output>/.nenya-work/<output name>/``; in the cache for remote outputs), written under a
temporary name, fsynced and renamed, followed by a ``.done.json`` marker with counts and
timings. A manifest holds the run's fingerprint (inputs, model weights, preprocessing, output
schema) so a rerun continues only when it would produce the same output, and a lock (``flock``,
released by the kernel when the process dies) refuses a second run writing the same output.
Final files are assembled from the parts in plan order and published atomically, with a status
table (``<output>.status.csv``: every id once, ``ok`` or ``skipped:<reason>``); the work folder
then goes. With ``append=True`` the rows of an existing output come first (resume by id).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from abc import abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from nenya._errors import InputError, OutputError
from nenya.pipeline import faults, storage
from nenya.pipeline.items import Batch, Group, Plan, Shard
from nenya.sinks import Sink, WriteContext

log = logging.getLogger(__name__)

WORK = ".nenya-work"
STATUS_SUFFIX = ".status.csv"


def _lock(path: str, job: str = ""):
    """An exclusive, non-blocking lock on ``path`` (None where flock is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    fh = open(path, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = LockHolder.parse(fh.read())
        fh.close()
        who = f"pid {holder.pid} on {holder.host}" if holder else "another process"
        raise OutputError(
            f"another nenya run ({who}) is writing the same output (lock {path}); wait for it to "
            "finish or stop it, then rerun: two runs never write one output together"
        ) from None
    fh.seek(0)
    fh.truncate()
    holder = LockHolder(os.getpid(), os.uname().nodename, time.time(), job, os.getppid())
    fh.write(json.dumps(dataclasses.asdict(holder)))
    fh.flush()
    return fh


@dataclass(frozen=True)
class LockHolder:
    """Who holds an output's lock: written into the lock file as JSON when it is taken."""

    pid: int
    host: str
    since: float
    job: str = ""  # the job of the rank that took it ("" for a single process, or an older nenya)
    ppid: int = 0  # its parent (ranks of one launch share it; 0 from an older nenya)

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        try:
            d = json.loads(text)
            return cls(int(d["pid"]), str(d["host"]), float(d["since"]), str(d.get("job", "")), int(d.get("ppid", 0)))
        except (ValueError, KeyError, TypeError):
            return None

    def dead_here(self) -> bool:
        """Whether the holder was a process of this machine that no longer runs."""
        return self.host == os.uname().nodename and not _alive(self.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead for us
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _held(path: str) -> bool:
    """Whether another process holds the lock ``path`` (tried without waiting, released at once)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    try:
        fh = open(path)
    except OSError:
        return False
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        fh.close()  # closing releases a lock taken here
    return False


def rank_lock_name(gdir: str, rank: int) -> str:
    """The lock file of one rank of a multi-process job: rank 0 (and a single-process run) takes
    ``<group>.lock``; rank r > 0 ``<group>.rank<r>.lock``. A second job collides on the same names."""
    return gdir + (".lock" if rank == 0 else f".rank{rank}.lock")


def read_status(path: str) -> list[tuple[str, str]]:
    """The (id, status) rows of a status table (local or URL); [] when it does not exist."""
    if not storage.exists(path):
        return []
    fs, p = storage.url_to_fs(path)
    with fs.open(p, "r", newline="") as f:
        return [(r["id"], r["status"]) for r in csv.DictReader(f)]


def vectors_digest(fingerprint: str) -> str:
    """A short digest of what determines a run's vectors (model, weights, preprocessing, precision)."""
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


class PartSink(Sink):
    """Base of sinks that commit shard parts and assemble one output file per group.

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
        self._locks: list = []
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

    # -- coordination between the ranks of one job ----------------------------------------
    def lock_holder(self, group: Group, rank: int) -> LockHolder | None:
        """Who took rank ``rank``'s lock on ``group`` in this run (None: not taken since ``since``)."""
        try:
            with open(rank_lock_name(self.group_dir(group), rank)) as f:
                return LockHolder.parse(f.read())
        except OSError:
            return None

    def post(self, group: Group, name: str, body: dict) -> None:
        """Leave a small JSON note next to ``group``'s parts (ranks tell rank 0 they finished)."""
        path = self.group_dir(group) + f".{name}.json"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with storage.atomic_local(path) as tmp, open(tmp, "w") as f:
            json.dump(body, f)

    def read_post(self, group: Group, name: str) -> dict | None:
        try:
            with open(self.group_dir(group) + f".{name}.json") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def remove_post(self, group: Group, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.group_dir(group) + f".{name}.json")

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
        grid = self._grid
        done: set[tuple[str, str]] = set()
        gdir = self.group_dir(g)
        lock_path = rank_lock_name(gdir, self.rank)
        lock = _lock(lock_path, self.job)
        if lock is not None:
            self._locks.append((lock_path, lock))
        if self.world == 1:  # a job of several ranks holds <group>.rank<r>.lock files too
            import glob

            for other in glob.glob(glob.escape(gdir) + ".rank*.lock"):
                if _held(other):
                    self._unlock()
                    raise OutputError(
                        f"a multi-process nenya run is writing the same output (lock {other}); "
                        "wait for it to finish or stop it, then rerun"
                    )
        manifest = os.path.join(gdir, "manifest.json")
        fp = (
            f"{fingerprint}|{g.fingerprint}|{type(self).__name__}|{self.schema_version}|{self._schema_tag()}"
            f"|grid={grid}|append={self.append}"
        )
        if os.path.exists(manifest):
            with open(manifest) as f:
                old = json.load(f).get("fingerprint")
            if old != hashlib.sha256(fp.encode()).hexdigest():
                if not self.overwrite:
                    raise OutputError(
                        f"{gdir} holds an unfinished run with a different model, preprocessing, input or "
                        "output format; rerun with --overwrite (clobber=True) to discard it, or choose another output"
                    )
                if self.rank == 0:
                    shutil.rmtree(gdir)
                else:  # rank 0 discards the old work; never delete parts another rank may be writing
                    self._await_manifest(manifest, hashlib.sha256(fp.encode()).hexdigest())
        os.makedirs(gdir, exist_ok=True)
        # orphans of a killed run; with several ranks another rank's temporaries may be live: they
        # go when rank 0 publishes and removes the work folder
        for name in os.listdir(gdir) if self.world == 1 else []:
            if storage.is_tmp_name(name):
                os.remove(os.path.join(gdir, name))
        if not os.path.exists(manifest):
            with storage.atomic_local(manifest) as tmp, open(tmp, "w") as f:
                json.dump(
                    {
                        "fingerprint": hashlib.sha256(fp.encode()).hexdigest(),
                        "output": storage.redact(self.output_path(g)),
                        "input": storage.redact(g.url),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    },
                    f,
                    indent=1,
                )
        for name in os.listdir(gdir):
            if name.endswith(".done.json") and os.path.exists(os.path.join(gdir, name[:-10] + ".arrow")):
                done.add((g.key, name[: -len(".done.json")]))
        return done

    supports_tiles = True

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
        table = self._part_table(items)
        if table.num_rows != len(shard) * self._tiles:
            raise AssertionError(
                f"shard {shard.key} of {group.url}: {table.num_rows} rows written, {len(shard) * self._tiles} planned"
            )
        gdir = self.group_dir(group)
        final = os.path.join(gdir, shard.key + ".arrow")
        with storage.disk_errors(final, dest=self.output_path(group)):
            with storage.atomic_local(final) as tmp:
                with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
                faults.point("part.write")
            faults.point("part.renamed")
            status = table.column("status").to_pylist()[:: self._tiles]
            marker = {
                "shard": shard.key,
                "partition": shard.partition,
                "start": shard.start,
                "stop": shard.stop,
                "items": len(shard),
                "ok": status.count("ok"),
                "skipped": len(status) - status.count("ok"),
                "seconds": round(time.perf_counter() - self._t0.pop(key, time.perf_counter()), 4),
            }
            with storage.atomic_local(os.path.join(gdir, shard.key + ".done.json")) as tmp, open(tmp, "w") as f:
                json.dump(marker, f)
        faults.point("marker.written")

    def _part_table(self, items: list[tuple[Batch, np.ndarray]]) -> pa.Table:
        """One shard's rows: per item (per tile for tile encoders) its id, place, status, metadata, vector."""
        dim, t = self._dim, self._tiles
        if not items:
            vec = pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), dim)
            return pa.table(
                {
                    "id": pa.array([], pa.string()),
                    "partition": pa.array([], pa.string()),
                    "position": pa.array([], pa.int64()),
                    "row": pa.array([], pa.int64()),
                    "status": pa.array([], pa.string()),
                    "vector": vec,
                }
            )
        ids, positions, rows, status, vecs = [], [], [], [], []
        meta: dict[str, list[np.ndarray]] = defaultdict(list)
        for batch, v in items:
            ids.extend(batch.ids)
            positions.append(batch.positions)
            rows.append(batch.rows)
            status.extend(batch.status or ["ok"] * len(batch))
            vecs.append(v)
            for c, arr in batch.metadata.items():
                meta[c].append(np.asarray(arr))
        n = len(ids)

        def rep(a) -> np.ndarray:  # per-item values, repeated once per tile
            a = np.asarray(a)
            return np.repeat(a, t) if t > 1 else a

        flat = np.ascontiguousarray(np.concatenate(vecs), dtype=np.float32).reshape(-1)
        if flat.size != n * t * dim:
            raise AssertionError(f"{flat.size} vector values for {n} items x {t} tiles x {dim}")
        columns = {
            "id": pa.array(rep(np.asarray(ids, dtype=object)), pa.string()),
            "partition": pa.array([items[0][0].shard.partition] * (n * t), pa.string()),
            "position": pa.array(rep(np.concatenate(positions))),
            "row": pa.array(rep(np.concatenate(rows))),
            "status": pa.array(rep(np.asarray(status, dtype=object)), pa.string()),
        }
        if self._grid is not None:
            cols = self._grid[1]
            tile = np.tile(np.arange(t), n)
            columns["tile_x"] = pa.array((tile % cols).astype(np.int32))
            columns["tile_y"] = pa.array((tile // cols).astype(np.int32))
        for c, arrs in meta.items():
            values = np.concatenate(arrs)
            if values.dtype.kind in "biufM":  # numbers, booleans, datetimes keep their type
                columns[f"meta:{c}"] = pa.array(rep(values))
            else:
                columns[f"meta:{c}"] = pa.array([None if x is None else str(x) for x in rep(values)], pa.string())
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
        return pa.table(columns)

    def _await_manifest(self, manifest: str, want: str, timeout: float = 600.0) -> None:
        """Rank r > 0 with --overwrite: wait until rank 0 has replaced an old run's manifest."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            time.sleep(0.5)
            try:
                with open(manifest) as f:
                    if json.load(f).get("fingerprint") == want:
                        return
            except (OSError, ValueError):
                continue
        raise OutputError(
            f"rank {self.rank}: rank 0 did not replace the unfinished run in {os.path.dirname(manifest)} "
            f"within {timeout:.0f} s; is rank 0 running? Rerun the job"
        )

    def committed(self) -> set[tuple[str, str]]:
        """The (group, shard key) pairs of the plan whose done marker exists (any process's)."""
        assert self._plan is not None
        dirs = {g.key: self.group_dir(g) for g in self._plan.groups}
        return {
            (s.group, s.key)
            for s in self._plan.shards
            if os.path.exists(os.path.join(dirs[s.group], s.key + ".done.json"))
        }

    def parts(self, group: Group, partition: str) -> list[str]:
        """Committed part files of a partition, in plan order."""
        assert self._plan is not None
        gdir = self.group_dir(group)
        keys = [s.key for s in self._plan.shards if s.group == group.key and s.partition == partition]
        return [os.path.join(gdir, k + ".arrow") for k in keys]

    def kept_rows(self, group: Group) -> int:
        """Rows the output of ``group`` will hold (items ``ok``, times tiles), from the done markers."""
        total = 0
        for p in group.partitions:
            for part in self.parts(group, p):
                with open(part[: -len(".arrow")] + ".done.json") as f:
                    total += json.load(f)["ok"]
        return total * self._tiles

    @staticmethod
    def read_part(path: str) -> pa.Table:
        with pa.memory_map(path, "r") as source:
            return pa.ipc.open_file(source).read_all()

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
        if os.path.isdir(self.work) and not os.listdir(self.work):
            os.rmdir(self.work)
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
        skipped = 0
        with open(local, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "status"])
            if self.append:
                w.writerows(read_status(self.status_path(group)))
            for p in group.partitions:
                for path in self.parts(group, p):
                    t = self.read_part(path).select(["id", "status"]).to_pydict()
                    ids, st = t["id"][:: self._tiles], t["status"][:: self._tiles]
                    skipped += sum(s != "ok" for s in st)
                    w.writerows(zip(ids, st))
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
        for path, fh in self._locks:
            with contextlib.suppress(OSError):
                os.remove(path)  # while still holding it: a waiting run then takes a fresh file
            fh.close()
        self._locks = []

    @abstractmethod
    def assemble(self, group: Group, path: str) -> None:
        """Write the final output of ``group`` to the local path ``path``."""
