"""``--max-skip-fraction`` holds at any size: a run over fewer than 100 items that skips more than
the limit fails (exit 2, a message that says how many of how many and how to raise the limit) and
publishes nothing; a rerun with a higher limit publishes from the committed shards."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from nenya._errors import NenyaError
from nenya.engines.runner import RunOptions
from nenya.extract import extract_collection
from photokit import picture, save, small_encoder

ENV = dict(os.environ, TQDM_DISABLE="1")
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NENYA_JOB_ID", "NENYA_FAULTS"):
    ENV.pop(_k, None)
TOO_MANY = r"1 of 21 items skipped \(4\.8%\), more than --max-skip-fraction {limit}"


@pytest.fixture
def photos(tmp_path):
    """20 good pictures and one broken file."""
    root = tmp_path / "photos"
    for i in range(20):
        save(picture(i), root / f"{i:02d}.png", "PNG")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture
def table(photos, tmp_path):
    """A path table over the same 21 files."""
    csv = tmp_path / "images.csv"
    pd.DataFrame({"path": sorted(str(p) for p in photos.iterdir())}).to_csv(csv, index=False)
    return csv


def extract(source, out, *extra):
    cmd = [sys.executable, "-m", "nenya", "extract", "--source", source, "--model", "timm:resnet18", "--size", "32"]
    cmd += ["--batch-size", "4", "--shard-size", "8", "--workers", "0", "--no-progress", "-o", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def published(out) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))


@pytest.mark.parametrize("kind", ["images", "table"])
def test_too_many_skipped_in_a_small_collection_fails_and_publishes_nothing(kind, photos, table, tmp_path):
    source = f"images:{photos}" if kind == "images" else f"table:{table}"
    out = tmp_path / "out" / "vectors.parquet"
    for limit in ("0.01", "0"):
        r = extract(source, out, "--max-skip-fraction", limit)
        assert r.returncode == 2, r.stderr
        assert re.search(TOO_MANY.format(limit=limit), r.stderr), r.stderr
        assert "no output was written" in r.stderr and "--max-skip-fraction 0.048" in r.stderr, r.stderr
        assert published(out) == [], published(out)  # neither the vectors nor the status table
    r = extract(source, out, "--max-skip-fraction", "0.1")  # a higher limit: the committed shards are published
    assert r.returncode == 0, r.stderr
    assert "3 shard(s) already done" in r.stdout and "1 item(s)" in r.stderr, r.stdout + r.stderr
    assert len(pd.read_parquet(out)) == 20
    assert published(out) == ["vectors.parquet", "vectors.parquet.status.csv"]


def test_the_limit_is_checked_over_every_item_in_the_python_api(photos, tmp_path):
    """One function judges every run: the library raises what the command line reports."""
    opts = RunOptions(batch_size=4, shard_size=4, num_workers=0, device="cpu", progress=False)
    out = tmp_path / "v.parquet"
    with pytest.raises(NenyaError, match=TOO_MANY.format(limit="0.02")):
        extract_collection(f"images:{photos}", small_encoder(), str(out), options=_limit(opts, 0.02))
    assert not out.exists()
    with pytest.raises(NenyaError, match=TOO_MANY.format(limit="0.02")):  # a rerun judges the committed shards too
        extract_collection(f"images:{photos}", small_encoder(), str(out), options=_limit(opts, 0.02))
    summary = extract_collection(f"images:{photos}", small_encoder(), str(out), options=_limit(opts, 0.05))
    assert summary.items == 0 and summary.shards_already_done == 6 and len(pd.read_parquet(out)) == 20


def _limit(opts: RunOptions, limit: float) -> RunOptions:
    from dataclasses import replace

    return replace(opts, max_skip_fraction=limit)


def test_ranks_judge_every_rank_s_items_together(photos, tmp_path):
    """With --devices 2, rank 0 judges the whole collection (each rank saw only part of it)."""
    out = tmp_path / "dev" / "vectors.parquet"
    r = extract(f"images:{photos}", out, "--max-skip-fraction", "0.01", "--devices", "2")
    assert r.returncode == 2 and "1 of 21 items skipped" in r.stderr, r.stderr
    assert published(out) == []
    r = extract(f"images:{photos}", out, "--max-skip-fraction", "0.1", "--devices", "2")
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(out)) == 20
