"""Part files: one Arrow IPC file per committed shard in an output's work folder
(``<shard key>.arrow``, written under a temporary name and renamed), then its done marker
(``<shard key>.done.json``: counts and timings). A shard counts as committed once both are there."""

from __future__ import annotations

import contextlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from nenya.pipeline import faults, storage
from nenya.pipeline.items import Batch, Shard

PART = ".arrow"
DONE = ".done.json"


def part_table(items: list[tuple[Batch, np.ndarray]], dim: int, tiles: int, grid: tuple[int, int] | None) -> pa.Table:
    """One shard's rows: per item (per tile for tile encoders) its id, place, status, metadata, vector."""
    t = tiles
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
    if grid is not None:
        cols = grid[1]
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


def write_part(path: str, table: pa.Table) -> None:
    """Write the part ``path`` (temporary name, fsync, rename)."""
    with storage.atomic_local(path) as tmp:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        faults.point("part.write")


def write_done(path: str, shard: Shard, table: pa.Table, tiles: int, seconds: float) -> None:
    """Write the done marker ``path`` of ``shard``, whose part holds ``table`` (``tiles`` rows per item)."""
    status = table.column("status").to_pylist()[::tiles]
    marker = {
        "shard": shard.key,
        "partition": shard.partition,
        "start": shard.start,
        "stop": shard.stop,
        "items": len(shard),
        "ok": status.count("ok"),
        "skipped": len(status) - status.count("ok"),
        "seconds": seconds,
    }
    with storage.atomic_local(path) as tmp, open(tmp, "w") as f:
        json.dump(marker, f)


def read_part(path: str) -> pa.Table:
    """The rows of the part ``path`` (memory-mapped)."""
    with pa.memory_map(path, "r") as source:
        return pa.ipc.open_file(source).read_all()


def kept_items(part: str) -> int:
    """Items of the part ``part`` that are ``ok``, from its done marker."""
    with open(part[: -len(PART)] + DONE) as f:
        return json.load(f)["ok"]


def counts(dones: Iterable[str]) -> tuple[int, int]:
    """(items, skipped items) over the committed shards whose done markers are among ``dones``."""
    items = skipped = 0
    for done in dones:
        if os.path.exists(done):
            with open(done) as f:
                marker = json.load(f)
            items, skipped = items + marker["items"], skipped + marker["skipped"]
    return items, skipped


def committed_keys(gdir: str) -> set[str]:
    """The shard keys in ``gdir`` with a part and a done marker."""
    return {
        name[: -len(DONE)]
        for name in os.listdir(gdir)
        if name.endswith(DONE) and os.path.exists(os.path.join(gdir, name[: -len(DONE)] + PART))
    }


def remove_if_empty(folder: str) -> None:
    """Remove ``folder`` when it exists and is empty (another run may have just started in it: then it stays)."""
    if os.path.isdir(folder) and not os.listdir(folder):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def remove_temporaries(gdir: str) -> None:
    """Remove the temporary files a killed run left in ``gdir``."""
    for name in os.listdir(gdir):
        if storage.is_tmp_name(name):
            os.remove(os.path.join(gdir, name))
