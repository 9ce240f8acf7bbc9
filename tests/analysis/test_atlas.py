"""``nenya umap --knn K`` writes the table embedding-atlas opens; embedding-atlas's own command loads it.

embedding-atlas is run as its users run it (the ``embedding-atlas`` console script, the command line of
docs/explore.md) with its ``--export-application`` option, which loads the table exactly as the server
does (its ``load_datasets``, its row ids, its PageRank/degree from the neighbours) and writes the data the
page reads (``data/dataset.parquet``, ``data/metadata.json``) instead of serving it; ``--static`` points at
an empty folder so its 88 MB of page assets are not copied. No embedding is computed, no model fetched.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nenya.analysis.atlas import knn
from nenya.analysis.images import anomaly_rgb
from nenya.cli import main

pytest.importorskip("embedding_atlas")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "explore.md"


def _latents(path: Path, n: int, *, seed: int = 0, parts: list[tuple[str, int]] | None = None) -> np.ndarray:
    """A Parquet latents file of ``n`` 8-d vectors (ids ``v/i``; ``partition``/``row`` if ``parts``)."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    cols: dict = {"id": [f"v/{i}" for i in range(n)], "label": rng.integers(0, 3, n)}
    if parts:
        cols["partition"] = [p for p, m in parts for _ in range(m)]
        cols["row"] = [r for _, m in parts for r in range(m)]
    table = pa.Table.from_pandas(pd.DataFrame(cols), preserve_index=False)
    table = table.append_column("vector", pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8))
    pq.write_table(table, path)
    return vectors


def _brute_knn(x: np.ndarray, k: int, metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1 - u @ u.T
    else:
        d = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0))
    np.fill_diagonal(d, np.inf)
    rows = np.argsort(d, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(d, rows, axis=1)


def _docs_lines() -> tuple[str, str]:
    """The ``nenya umap ... --knn`` and ``embedding-atlas`` command lines of docs/explore.md."""
    text = DOCS.read_text(encoding="utf-8")
    umap = re.search(r"^nenya umap .*--knn.*$", text, re.M)
    atlas = re.search(r"^embedding-atlas .*$", text, re.M)
    assert umap and atlas, "docs/explore.md shows `nenya umap ... --knn` and the embedding-atlas command"
    return umap.group(0), atlas.group(0)


def _run_atlas(words: list[str], out: Path, tmp_path: Path) -> tuple[pd.DataFrame, dict]:
    """embedding-atlas's own command on ``words`` (its arguments), exporting instead of serving."""
    exe = shutil.which("embedding-atlas", path=os.path.dirname(sys.executable)) or shutil.which("embedding-atlas")
    cmd = [exe] if exe else [sys.executable, "-m", "embedding_atlas.cli"]
    static = tmp_path / "no-assets"
    static.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),  # its cache, kept out of ~/.cache
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    extra = ["--export-application", str(out), "--static", str(static)]
    proc = subprocess.run([*cmd, *words, *extra], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    meta = json.loads((out / "data" / "metadata.json").read_text())
    return pd.read_parquet(out / "data" / "dataset.parquet"), meta


def test_embedding_atlas_loads_ids_coordinates_and_neighbours(tmp_path, capsys):
    lat = tmp_path / "x.parquet"
    vectors = _latents(lat, 300)
    assert main(["umap", str(lat), "--knn", "5", "-o", str(tmp_path / "x_umap.parquet")]) == 0
    captured = capsys.readouterr()
    out = captured.out.strip()
    written = pd.read_parquet(out)
    assert written.columns.tolist() == ["id", "label", "U0", "U1", "neighbors"]
    printed = re.search(r"open it in embedding-atlas: (.*)", captured.err).group(1)
    assert printed == shlex.join(
        ["embedding-atlas", out, "--x", "U0", "--y", "U1", "--neighbors", "neighbors", "--disable-projection"]
    )

    df, meta = _run_atlas(shlex.split(printed)[1:], tmp_path / "export", tmp_path)
    props = meta["props"]["data"]
    assert props["projection"] == {"x": "U0", "y": "U1"} and props["neighbors"] == "neighbors"
    rid = props["id"]
    np.testing.assert_array_equal(df[rid].to_numpy(), np.arange(300))  # its row ids: the rows, in order
    assert df["id"].tolist() == [f"v/{i}" for i in range(300)]
    np.testing.assert_array_equal(df["U0"].to_numpy(), written["U0"].to_numpy())
    np.testing.assert_array_equal(df["U1"].to_numpy(), written["U1"].to_numpy())

    ref_rows, ref_dist = _brute_knn(vectors.astype(np.float64), 5)
    got_rows = np.stack([np.asarray(v["ids"]) for v in df["neighbors"]])
    got_dist = np.stack([np.asarray(v["distances"]) for v in df["neighbors"]])
    np.testing.assert_array_equal(got_rows, ref_rows)
    np.testing.assert_allclose(got_dist, ref_dist, rtol=1e-4)

    import duckdb  # the engine its page queries the table with

    con = duckdb.connect()
    dataset = str(tmp_path / "export" / "data" / "dataset.parquet")
    res = con.execute(f"SELECT {rid}, neighbors.ids FROM read_parquet(?) ORDER BY {rid}", [dataset]).fetchall()
    assert [list(r[1]) for r in res] == ref_rows.tolist()


def test_docs_command_opens_thumbnails_and_pagerank(tmp_path, preproc, capsys):
    import h5py
    from PIL import Image

    with h5py.File(preproc, "r") as f:
        cutouts = {p: f[p][:, 0] for p in ("valid", "train")}
    lat = tmp_path / "x_latents.parquet"
    vectors = _latents(lat, 58, seed=1, parts=[("valid", 37), ("train", 21)])
    umap_line, atlas_line = _docs_lines()
    args = shlex.split(umap_line)[1:]
    args = [str(lat) if a == "x_latents.h5" else str(preproc) if a == "x_preproc.h5" else a for a in args]
    assert str(preproc) in args, umap_line
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out.strip()
    assert out == str(tmp_path / "x_latents_umap.parquet")
    words = shlex.split(atlas_line)
    assert words[1] == "x_latents_umap.parquet"
    assert f"open it in embedding-atlas: {shlex.join([words[0], out, *words[2:]])}" in captured.err
    k = int(args[args.index("--knn") + 1])

    # --degree: its in-degree of each row, from the same neighbour graph as its PageRank
    df, meta = _run_atlas([out, *words[2:], "--degree"], tmp_path / "export", tmp_path)
    props = meta["props"]["data"]
    assert props["image"] == "image" and props["neighbors"] == "neighbors" and props["importance"] == "pagerank"
    assert df["id"].tolist() == [f"v/{i}" for i in range(58)]
    ref_rows, _ = _brute_knn(vectors.astype(np.float64), k)
    np.testing.assert_array_equal(np.stack([np.asarray(v["ids"]) for v in df["neighbors"]]), ref_rows)
    np.testing.assert_array_equal(df["out_degree"].to_numpy(), np.full(58, k))
    np.testing.assert_array_equal(df["in_degree"].to_numpy(), np.bincount(ref_rows.ravel(), minlength=58))
    pagerank = df["pagerank"].to_numpy()  # its PageRank over nenya's neighbour graph
    assert np.isfinite(pagerank).all() and pagerank.sum() == pytest.approx(1, abs=1e-3)
    for i, png in enumerate(df["image"]):
        part, row = ("valid", i) if i < 37 else ("train", i - 37)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), anomaly_rgb(cutouts[part][row]))


def test_knn_hnsw_and_cosine_leave_each_row_out(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1500, 16)).astype(np.float32)
    x[1] = x[0]  # a duplicate: the row itself need not come first
    rows, dist, counts = knn(x, 10, flat_max=100, chunk=400)  # HNSW
    assert (counts == 10).all() and not (rows == np.arange(1500)[:, None]).any()
    ref, _ = _brute_knn(x.astype(np.float64), 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, ref)])
    assert recall > 0.9
    assert rows[0, 0] == 1 and rows[1, 0] == 0 and dist[0, 0] == pytest.approx(0, abs=1e-3)
    rows, dist, counts = knn(x, 4, metric="cosine", chunk=700)  # exact
    ref, ref_d = _brute_knn(x.astype(np.float64), 4, "cosine")
    tie = np.isin(ref, [0, 1])  # rows 0 and 1 are the same vector: either may come first
    np.testing.assert_array_equal(rows[~tie], ref[~tie])
    np.testing.assert_allclose(dist, ref_d, atol=1e-5)


def test_images_need_knn(tmp_path, capsys):
    lat = tmp_path / "x.parquet"
    _latents(lat, 20)
    assert main(["umap", str(lat), "--images", "p.h5"]) == 2
    assert "go with --knn" in capsys.readouterr().err
