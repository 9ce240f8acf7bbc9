"""nenya.analysis: the three latents layouts, PCA, clusters, FAISS search, plots and the CLI sub-commands."""

from __future__ import annotations

import re
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nenya.analysis import build_index, hdbscan, kmeans, open_latents, pca, read_latents, read_table
from nenya.analysis.images import ImageLookup
from nenya.analysis.plots import gallery_plot, neighbours_plot, scatter_plot
from nenya.sample_data import write_preproc


def _colours(path) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return len(np.unique(rgb, axis=0))


@pytest.fixture
def layouts(tmp_path):
    """The same 60 vectors (16-d) in the three layouts; the HDF5 one has a skipped row and metadata."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(40, 16)).astype(np.float32)
    t = rng.normal(size=(21, 16)).astype(np.float32)
    h5 = tmp_path / "x_latents.h5"
    with h5py.File(h5, "w") as f:
        f["valid"] = v
        f["train"] = t
        valid = np.ones(40, bool)
        valid[7] = False
        f["valid"][7] = 0
        f["valid_valid"] = valid
        meta = np.array([[f"{i * 0.5}", ["a", "b"][i % 2]] for i in range(40)], dtype="S8")
        f["valid_metadata"] = meta
        f["valid_metadata"].attrs["columns"] = [b"DT40", b"label"]
    keep = np.r_[np.delete(np.arange(40), 7)]
    ids = [f"valid/{i}" for i in keep] + [f"train/{i}" for i in range(21)]
    vecs = np.concatenate([v[keep], t])
    table = pa.table(
        {
            "id": ids,
            "partition": [i.split("/")[0] for i in ids],
            "row": [int(i.split("/")[1]) for i in ids],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float16).reshape(-1)), 16),
        }
    )
    pq.write_table(table, tmp_path / "x.parquet")
    np.save(tmp_path / "y.npy", vecs)
    pq.write_table(table.drop(["vector"]), tmp_path / "y.parquet")
    return {"h5": h5, "parquet": tmp_path / "x.parquet", "npy": tmp_path / "y.npy", "ids": ids, "vectors": vecs}


@pytest.mark.parametrize("fmt", ["h5", "parquet", "npy"])
def test_read_latents_all_layouts(layouts, fmt):
    ids, vectors, meta = read_latents(str(layouts[fmt]))
    assert list(ids) == layouts["ids"]
    assert vectors.dtype == np.float32 and vectors.shape == (60, 16)
    atol = 1e-2 if fmt == "parquet" else 0  # float16 in the Parquet file
    np.testing.assert_allclose(vectors, layouts["vectors"], atol=atol)
    assert list(meta["partition"][:2]) == ["valid", "valid"] and meta["row"].iloc[7] == 8
    with open_latents(str(layouts[fmt])) as lat:
        assert (lat.n, lat.dim) == (60, 16)
        rows = np.array([59, 3, 30, 3])
        np.testing.assert_allclose(lat.vectors(rows), vectors[rows])
        chunks = [v for _, v in lat.iter_vectors(chunk=7)]
        np.testing.assert_allclose(np.concatenate(chunks), vectors)
    if fmt == "h5":
        assert meta["DT40"].dtype.kind == "f" and meta["label"].iloc[0] == "a"


def test_reader_errors_name_the_fix(tmp_path, layouts):
    with pytest.raises(ValueError, match="cannot tell the layout"):
        read_latents(str(tmp_path / "x.txt"))
    (tmp_path / "z.npy").write_bytes(open(layouts["npy"], "rb").read())
    with pytest.raises(ValueError, match="z.parquet"):
        read_latents(str(tmp_path / "z.npy"))
    pre = write_preproc(tmp_path / "p_preproc.h5", n_valid=5, size=16)
    with pytest.raises(ValueError, match="preproc"):
        read_latents(pre)


def test_read_latents_fsspec_url(layouts):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/lat/x.parquet", open(layouts["parquet"], "rb").read())
    ids, vectors, _ = read_latents("memory://lat/x.parquet")
    assert list(ids) == layouts["ids"] and vectors.shape == (60, 16)


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    x = np.random.default_rng(1).normal(size=(400, 24)).astype(np.float32) * np.geomspace(5, 0.05, 24)
    res = pca(x, 5)
    ref = PCA(5).fit(x)
    np.testing.assert_allclose(res.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(np.abs(res.scores), np.abs(ref.transform(x)), rtol=1e-3, atol=1e-3)
    inc = pca(x, 5, incremental=True, batch_size=97)
    assert inc.incremental
    np.testing.assert_allclose(inc.explained_variance_ratio, ref.explained_variance_ratio_, rtol=2e-2)


def test_clusters_find_blobs():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 8)) * 10
    x = np.concatenate([c + rng.normal(size=(100, 8)) for c in centres]).astype(np.float32)
    truth = np.repeat(np.arange(3), 100)
    for labels in (kmeans(x, 3)[0], kmeans(x, 3, minibatch=True)[0], hdbscan(x, min_cluster_size=20)):
        assert pd.crosstab(labels, truth).max(axis=1).sum() >= 295


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_flat_search_is_exact(metric, tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    q = rng.normal(size=(20, 32)).astype(np.float32)
    idx = build_index(x, kind="flat", metric=metric)
    ids, scores, rows = idx.search(q, 10)
    if metric == "l2":
        d = ((q[:, None, :] - x[None]) ** 2).sum(-1)
        ref = np.argsort(d, axis=1)[:, :10]
    else:
        xx, qq = (
            (x, q)
            if metric == "ip"
            else (x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True))
        )
        ref = np.argsort(-(qq @ xx.T), axis=1)[:, :10]
    np.testing.assert_array_equal(rows, ref)
    assert ids[0, 0] == str(ref[0, 0])
    path, idp = idx.save(str(tmp_path / "i.faiss"))
    from nenya.analysis import load_index

    again = load_index(path)
    np.testing.assert_array_equal(again.search(q, 10)[2], ref)
    got, _, _ = again.search_id("5", 3)
    assert "5" not in list(got[0]) and len(got[0]) == 3


@pytest.mark.slow
def test_hnsw_recall_at_10_on_100k():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100_000, 32)).astype(np.float32)
    q = rng.normal(size=(300, 32)).astype(np.float32)
    exact = build_index(x, kind="flat").search(q, 10)[2]
    approx = build_index(x, kind="hnsw", m=32, ef_search=128).search(q, 10)[2]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert recall >= 0.95, f"recall@10 = {recall:.3f}"
    ivf = build_index(x, kind="ivf", nlist=256, nprobe=128).search(q, 10)[2]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, ivf)]) >= 0.95


def test_plots_are_not_blank(tmp_path):
    rng = np.random.default_rng(5)
    pre = write_preproc(tmp_path / "g_preproc.h5", n_valid=300, size=16, seed=1)
    table = pd.DataFrame(
        {
            "partition": "valid",
            "row": np.arange(300),
            "U0": rng.normal(size=300),
            "U1": rng.normal(size=300),
            "c": rng.integers(0, 3, 300),
            "v": rng.normal(size=300),
        }
    )
    for col in ("c", "v", None):
        out = scatter_plot(
            table.U0,
            table.U1,
            str(tmp_path / f"s_{col}.png"),
            color=None if col is None else table[col],
            color_name=col,
        )
        assert _colours(out) > 20
    lookup = ImageLookup(table, images=pre)
    g = gallery_plot(table.U0.to_numpy(), table.U1.to_numpy(), lookup.get, str(tmp_path / "g.png"), nxy=6)
    assert _colours(g) > 200
    imgs = lookup.get([0, 1, 2])
    with h5py.File(pre) as f:
        np.testing.assert_array_equal(imgs[1], f["valid"][1][0])
    n = neighbours_plot(imgs, ["q", "a", "b"], str(tmp_path / "n.png"))
    assert _colours(n) > 100


def test_photo_thumbnails_from_path_column(tmp_path):
    rng = np.random.default_rng(6)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(p)
        paths.append(p.name)
    table = pd.DataFrame({"id": ["../x", "a\x00b", "c"], "path": paths + []})
    lookup = ImageLookup(table, image_root=str(tmp_path))
    imgs = lookup.get([0, 1, 2])
    assert lookup.kind == "photo" and all(i.shape == (64, 64, 3) for i in imgs)


def _nenya(*args, cwd=None) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "nenya", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.slow
def test_cli_subcommands(tmp_path, layouts):
    pre = write_preproc(tmp_path / "c_preproc.h5", n_valid=40, n_train=21, size=16, seed=2)
    h5 = str(layouts["h5"])
    out = _nenya("pca", h5, "-n", "3").stdout.strip().splitlines()[-1]
    assert out.endswith("x_latents_pca.parquet") and {"id", "PC0", "PC2", "DT40"} <= set(pd.read_parquet(out).columns)
    out = _nenya(
        "cluster", h5, "--method", "kmeans,hdbscan", "-k", "3", "--min-cluster-size", "5", "-o", tmp_path / "cl.parquet"
    ).stdout.strip()
    df = pd.read_parquet(out)
    assert out == str(tmp_path / "cl.parquet") and df["kmeans"].nunique() == 3 and "hdbscan" in df
    out = _nenya("umap", str(layouts["npy"]), "--output", f"{tmp_path}/um/").stdout.strip()
    um = read_table(out)
    assert out == str(tmp_path / "um" / "y_umap.parquet") and np.isfinite(um[["U0", "U1"]].to_numpy()).all()
    idx = _nenya("index", str(layouts["parquet"]), "--kind", "hnsw").stdout.strip()
    assert idx.endswith("x.faiss")
    r = _nenya("search", idx, "--id", "train/3", "-k", "4")
    res = pd.read_parquet(r.stdout.strip())
    assert len(res) == 4 and "train/3" not in set(res["id"])
    vec = ",".join(str(float(v)) for v in layouts["vectors"][0])
    res = pd.read_parquet(_nenya("search", h5, "--vector", vec, "-k", "2").stdout.strip())
    assert res["id"].iloc[0] == layouts["ids"][0]
    png = _nenya("plot", "scatter", out, "--color", "partition").stdout.strip()
    assert _colours(png) > 20
    png = _nenya("plot", "gallery", out, "--images", pre, "--nxy", "5").stdout.strip()
    assert _colours(png) > 100
    png = _nenya(
        "plot", "neighbours", h5, "--id", "valid/0", "-k", "3", "--images", pre, "-o", tmp_path / "nb.png"
    ).stdout.strip()
    assert png == str(tmp_path / "nb.png") and _colours(png) > 50
    html = _nenya("explore", h5, "--coords", out, "--images", pre, "-o", tmp_path / "ex.html").stdout.strip()
    text = open(html, encoding="utf-8").read()
    assert "nenya-data" in text and "Content-Security-Policy" in text and "connect-src 'none'" in text
    # no element loads anything from elsewhere (the inline scripts' text aside: BokehJS names web sites in
    # comments and in loaders this page never calls; the CSP above would refuse them, the browser tests count
    # requests)
    markup = re.sub(r"<script[^>]*>.*?</script>", "", text, flags=re.S)
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup) is None
    bad = subprocess.run([sys.executable, "-m", "nenya", "search", h5, "--id", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope" in bad.stderr
