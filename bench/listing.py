"""How long a big image collection takes to reach its first batch: path tables and folders.

A table of ``--rows`` rows (default 1,000,000) is written as CSV and as Parquet, with an id, a
relative path (cycling over 10 real tiny PNGs: paths need not be distinct, ids are), and three
metadata columns (int, float, string). For each format the script times, in a fresh source:

  plan         ``PathTableSource(...).plan(shard_size)``: read the table, check ids, shard
  first batch  ``next(source.read(first_shard, batch_size))``: resolve, read and decode one batch
  pickle       ``pickle.dumps(source)`` after planning (what a spawned DataLoader worker receives)

Then a folder of ``--files`` empty ``.jpg`` files in 100 sub-folders is listed by
``ImageFolderSource(...).plan()`` (names only: no file is opened or stat'ed).

    python bench/listing.py                    # 1,000,000 rows, 50,000 files
    python bench/listing.py --rows 200000 --files 0

Prints a table and appends it, dated and with the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import Image

from nenya.encoders.base import ImageTransform
from nenya.sources.images import ImageFolderSource
from nenya.sources.table import PathTableSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_results, markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


def make_table(folder: Path, rows: int) -> pa.Table:
    imgs = folder / "imgs"
    imgs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(imgs / f"img{i}.png")
    idx = np.arange(rows)
    return pa.table(
        {
            "id": pa.array(np.char.add("item", idx.astype(str)).astype(object), pa.string()),
            "path": pa.array(
                np.char.add(np.char.add("imgs/img", (idx % 10).astype(str)), ".png").astype(object), pa.string()
            ),
            "label": pa.array(idx % 7, pa.int64()),
            "score": pa.array(rng.random(rows)),
            "site": pa.array(np.char.add("site-", (idx % 123).astype(str)).astype(object), pa.string()),
        }
    )


def time_table(path: Path, *, shard_size: int, batch_size: int, transform: ImageTransform) -> dict[str, float]:
    t0 = time.perf_counter()
    src = PathTableSource(path, transform=transform, id_column="id")
    plan = src.plan(shard_size)
    t1 = time.perf_counter()
    batch = next(src.read(plan.shards[0], batch_size))
    t2 = time.perf_counter()
    assert batch.status is None and len(batch) == min(batch_size, plan.total), batch.status
    blob = pickle.dumps(src)
    t3 = time.perf_counter()
    return {
        "plan": t1 - t0,
        "first": t2 - t1,
        "to_first": t2 - t0,
        "pickle": t3 - t2,
        "pickle_mb": len(blob) / 2**20,
        "shards": len(plan.shards),
    }


def time_folder(folder: Path, files: int, *, shard_size: int) -> tuple[float, int]:
    root = folder / "many"
    per = max(1, files // 100)
    for d in range(100):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(min(per, files - d * per)):
            (sub / f"f{i:06d}.jpg").touch()
    t0 = time.perf_counter()
    plan = ImageFolderSource(root, transform=ImageTransform()).plan(shard_size)
    return time.perf_counter() - t0, plan.total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=50_000, help="files in the folder-listing test (0: skip it)")
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nenya-bench-listing-"))
    try:
        transform = ImageTransform(size=(224, 224), resize=256)
        table = make_table(work, args.rows)
        csv_path, pq_path = work / "images.csv", work / "images.parquet"
        pacsv.write_csv(table, csv_path)
        pq.write_table(table, pq_path)
        rows = []
        for fmt, path in (("CSV", csv_path), ("Parquet", pq_path)):
            r = time_table(path, shard_size=args.shard_size, batch_size=args.batch_size, transform=transform)
            size_mb = path.stat().st_size / 2**20
            rows.append(
                [
                    f"{fmt} table, {args.rows:,} rows ({size_mb:.0f} MiB)",
                    f"{r['plan']:.2f}",
                    f"{r['first']:.2f}",
                    f"**{r['to_first']:.2f}**",
                    f"{r['pickle']:.2f} ({r['pickle_mb']:.0f} MiB)",
                    f"{r['shards']:,}",
                ]
            )
            print(rows[-1], flush=True)
        if args.files:
            secs, n = time_folder(work, args.files, shard_size=args.shard_size)
            rows.append([f"folder, {n:,} files in 100 sub-folders", f"{secs:.2f}", "", "", "", ""])
            print(rows[-1], flush=True)
        header = ["input", "plan (s)", "first batch (s)", "to first batch (s)", "pickle (s, size)", "shards"]
        lines = markdown_table(header, rows)
        print("\n".join(lines))
        if not args.no_record:
            notes = [
                "",
                f"Path tables: `PathTableSource(table, id_column='id')`, {args.batch_size}-image first batch at "
                f"224x224 (resize 256, center crop) from 10 real 64x48 PNGs reused; plan = read + id checks + "
                f"shards of {args.shard_size}. Pickle = what a spawned DataLoader worker receives (forked workers "
                "inherit the source without pickling). Folder: `ImageFolderSource.plan()` over empty files "
                "(names from directory entries only). Target: first batch < 10 s on 2 cores.",
            ]
            append_results(
                RESULTS, "Listing: path tables and folders to the first batch (bench/listing.py)", lines + notes
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
