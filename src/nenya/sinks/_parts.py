"""Shard parts: the unit of commit shared by the file sinks.

Each committed shard is one Arrow IPC file in a work folder next to the output
(``<output>/.nenya-work/<output name>/``; in the cache for remote outputs), written under a
temporary name, fsynced and renamed, followed by a ``.done.json`` marker with counts and
timings. A manifest holds the run's fingerprint (inputs, model weights, preprocessing, output
schema) so a rerun continues only when it would produce the same output. Final files are
assembled from the parts in plan order and published atomically; the work folder then goes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from abc import abstractmethod
from collections import defaultdict

import numpy as np
import pyarrow as pa

from nenya._errors import OutputError
from nenya.pipeline import storage
from nenya.pipeline.items import Batch, Group, Plan, Shard
from nenya.sinks import Sink

log = logging.getLogger(__name__)

WORK = ".nenya-work"


def vectors_of(table: pa.Table, column: str = "vector") -> np.ndarray:
    """The fixed-size-list column of a table as a (N, dim) array (zero-copy when possible)."""
    col = table.column(column).combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


class PartSink(Sink):
    """Base of sinks that commit shard parts and assemble one output file per group.

    Args:
        output: output folder, local path or URL.
        overwrite: replace existing outputs and discard work of a different configuration.
    """

    ext = ""
    schema_version = "1"

    def __init__(self, output: str | os.PathLike, *, overwrite: bool = False) -> None:
        self.output = str(output)
        self.overwrite = overwrite
        if storage.is_remote(self.output):
            key = hashlib.sha256(self.output.encode()).hexdigest()[:16]
            self.work = str(storage.cache_dir() / "work" / key)
        else:
            self.output = storage.local_path(self.output)
            self.work = os.path.join(self.output, WORK)
        self._buffers: dict[tuple[str, str], list[tuple[Batch, np.ndarray]]] = defaultdict(list)
        self._plan: Plan | None = None
        self._dim = 0
        self._t0: dict[tuple[str, str], float] = {}

    # -- locations ----------------------------------------------------------------------
    def output_path(self, group: Group) -> str:
        return storage.join(self.output, group.output_name)

    def group_dir(self, group: Group) -> str:
        return os.path.join(self.work, group.output_name)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, plan: Plan, *, dim: int, fingerprint: str) -> set[tuple[str, str]]:
        self._plan, self._dim = plan, dim
        if not storage.is_remote(self.output):
            try:
                os.makedirs(self.output, exist_ok=True)
            except OSError as e:
                raise OutputError(f"cannot create output folder {self.output}: {e.strerror}; choose a writable location") from None
            if not os.access(self.output, os.W_OK):
                raise OutputError(f"output folder {self.output} is not writable; choose another with --output")
        done: set[tuple[str, str]] = set()
        for g in plan.groups:
            gdir = self.group_dir(g)
            manifest = os.path.join(gdir, "manifest.json")
            fp = f"{fingerprint}|{g.fingerprint}|{type(self).__name__}|{self.schema_version}|{self._schema_tag()}"
            if os.path.exists(manifest):
                with open(manifest) as f:
                    old = json.load(f).get("fingerprint")
                if old != fp:
                    if not self.overwrite:
                        raise OutputError(
                            f"{gdir} holds an unfinished run with a different model, preprocessing, input or "
                            "output format; rerun with --overwrite (clobber=True) to discard it, or choose another output")
                    shutil.rmtree(gdir)
            os.makedirs(gdir, exist_ok=True)
            for name in os.listdir(gdir):  # orphans of a killed run
                if storage.is_tmp_name(name):
                    os.remove(os.path.join(gdir, name))
            if not os.path.exists(manifest):
                with storage.atomic_local(manifest) as tmp, open(tmp, "w") as f:
                    json.dump({"fingerprint": fp, "output": self.output_path(g), "input": g.url,
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=1)
            for name in os.listdir(gdir):
                if name.endswith(".done.json") and os.path.exists(os.path.join(gdir, name[:-10] + ".arrow")):
                    done.add((g.key, name[: -len(".done.json")]))
        return done

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
        if table.num_rows != len(shard):
            raise AssertionError(f"shard {shard.key} of {group.url}: {table.num_rows} rows written, {len(shard)} planned")
        gdir = self.group_dir(group)
        final = os.path.join(gdir, shard.key + ".arrow")
        with storage.atomic_local(final) as tmp:
            with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        status = table.column("status").to_pylist()
        marker = {"shard": shard.key, "partition": shard.partition, "start": shard.start, "stop": shard.stop,
                  "items": len(shard), "ok": status.count("ok"), "skipped": len(status) - status.count("ok"),
                  "seconds": round(time.perf_counter() - self._t0.pop(key, time.perf_counter()), 4)}
        with storage.atomic_local(os.path.join(gdir, shard.key + ".done.json")) as tmp, open(tmp, "w") as f:
            json.dump(marker, f)

    def _part_table(self, items: list[tuple[Batch, np.ndarray]]) -> pa.Table:
        dim = self._dim
        if not items:
            vec = pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), dim)
            return pa.table({"id": pa.array([], pa.string()), "partition": pa.array([], pa.string()),
                             "position": pa.array([], pa.int64()), "row": pa.array([], pa.int64()),
                             "status": pa.array([], pa.string()), "vector": vec})
        ids, positions, rows, status, vecs = [], [], [], [], []
        meta: dict[str, list[np.ndarray]] = defaultdict(list)
        for batch, v in items:
            ids.extend(batch.ids)
            positions.append(batch.positions)
            rows.append(batch.rows)
            status.extend(batch.status or ["ok"] * len(batch))
            vecs.append(v)
            for c, arr in batch.metadata.items():
                meta[c].append(arr)
        flat = np.ascontiguousarray(np.concatenate(vecs), dtype=np.float32).reshape(-1)
        columns = {
            "id": pa.array(ids, pa.string()),
            "partition": pa.array([items[0][0].shard.partition] * len(ids), pa.string()),
            "position": pa.array(np.concatenate(positions)),
            "row": pa.array(np.concatenate(rows)),
            "status": pa.array(status, pa.string()),
        }
        for c, arrs in meta.items():
            columns[f"meta:{c}"] = pa.array(np.concatenate(arrs).astype(str), pa.string())
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
        return pa.table(columns)

    def parts(self, group: Group, partition: str) -> list[str]:
        """Committed part files of a partition, in plan order."""
        assert self._plan is not None
        gdir = self.group_dir(group)
        keys = [s.key for s in self._plan.shards if s.group == group.key and s.partition == partition]
        return [os.path.join(gdir, k + ".arrow") for k in keys]

    @staticmethod
    def read_part(path: str) -> pa.Table:
        with pa.memory_map(path, "r") as source:
            return pa.ipc.open_file(source).read_all()

    def finish(self) -> list[str]:
        assert self._plan is not None
        outputs = []
        for g in self._plan.groups:
            missing = [s.key for s in self._plan.shards if s.group == g.key
                       and not os.path.exists(os.path.join(self.group_dir(g), s.key + ".done.json"))]
            if missing:
                continue  # an interrupted run: the parts stay for the next one
            dest = self.output_path(g)
            local = storage.tmp_name(os.path.join(self.group_dir(g), g.output_name))
            try:
                self.assemble(g, local)
                self._write_skips(g)
                storage.publish(local, dest)
            finally:
                if os.path.exists(local):
                    os.remove(local)
            shutil.rmtree(self.group_dir(g), ignore_errors=True)
            outputs.append(dest)
        if os.path.isdir(self.work) and not os.listdir(self.work):
            os.rmdir(self.work)
        return outputs

    def _write_skips(self, group: Group) -> None:
        """List skipped items (id, reason) in ``<output>.skipped.csv`` when there are any."""
        rows = []
        for p in group.partitions:
            for path in self.parts(group, p):
                t = self.read_part(path).select(["id", "status"]).to_pydict()
                rows += [(i, s.removeprefix("skipped:")) for i, s in zip(t["id"], t["status"]) if s != "ok"]
        if not rows:
            return
        local = os.path.join(self.group_dir(group), group.output_name + ".skipped.csv")
        with open(local, "w") as f:
            f.write("id,reason\n")
            f.writelines(f"{i},{r}\n" for i, r in rows)
        log.warning("%d item(s) of %s skipped; see %s.skipped.csv", len(rows), group.url, group.output_name)
        storage.publish(local, storage.join(self.output, group.output_name + ".skipped.csv"))

    @abstractmethod
    def assemble(self, group: Group, path: str) -> None:
        """Write the final output of ``group`` to the local path ``path``."""

    def abort(self) -> None:
        self._buffers.clear()
