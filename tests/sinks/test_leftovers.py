"""What runs killed at the worst moment leave next to an output is cleaned by the next run: a copy of
a file killed while it was being published, and an empty work folder killed just before its removal."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from nenya.cli import main
from nenya.pipeline import storage


def test_remove_stale_tmp_removes_only_the_temporaries_of_that_file(tmp_path):
    dest = tmp_path / "x.parquet"
    mine = [tmp_path / ".x.parquet.tmp-0badf00d", tmp_path / ".x.parquet.tmp-deadbeef"]
    others = [
        tmp_path / ".y.parquet.tmp-0badf00d",
        tmp_path / ".x.parquet.status.csv.tmp-0badf00d",
        tmp_path / "x.parquet",
    ]
    for p in mine + others:
        p.write_text("x")
    storage.remove_stale_tmp(dest)
    assert [p.exists() for p in mine] == [False, False] and all(p.exists() for p in others)
    storage.remove_stale_tmp("s3://bucket/x.parquet")  # object stores never show partial uploads: nothing to do


def test_the_next_run_cleans_a_killed_publish_and_an_empty_work_folder(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    # copies a run killed while publishing would have left (its temporaries of the output and status table)
    stale = [out / ".vectors.parquet.tmp-0badf00d", out / ".vectors.parquet.status.csv.tmp-deadbeef"]
    for p in stale:
        p.write_text("half a copy")
    args = ["extract", "--source", f"images:{folder}", "--model", "timm:resnet18", "--size", "32", "--workers", "0"]
    assert main([*args, "-o", str(out / "vectors.parquet"), "--no-progress"]) == 0
    assert not any(p.exists() for p in stale)
    assert sorted(os.listdir(out)) == ["vectors.parquet", "vectors.parquet.status.csv"]
    # killed after its last output, before it removed the (empty) work folder: the next run, with nothing
    # to do, removes it
    (out / ".nenya-work").mkdir()
    assert main([*args, "-o", str(out / "vectors.parquet"), "--no-progress"]) == 0
    assert sorted(os.listdir(out)) == ["vectors.parquet", "vectors.parquet.status.csv"]
