"""compare_collections and `nenya compare`: calibrated and powerful two-sample tests, cluster shares,
the record check and the report folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from conftest import save_checkpoint
from nenya.analysis.shift import classifier_test, cluster_shares, compare_collections, mmd_test
from nenya.cli import main
from nenya.sample_data import write_preproc

CHROMIUM = "/usr/bin/chromium"


def _collection(n: int = 2000, d: int = 128, seed: int = 0) -> np.ndarray:
    """Vectors in 8 clusters: a collection with structure, as latents have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d)) * 1.5
    return (centres[rng.integers(0, 8, n)] + rng.normal(size=(n, d))).astype(np.float32)


def _mmd_reference(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Unbiased MMD² from the full kernel matrices (Gretton et al. 2012, eq. 3)."""

    def k(a, b):
        d2 = ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(axis=2)
        return np.exp(-d2 / (2 * sigma**2))

    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()


def test_mmd_equals_the_reference_and_does_not_depend_on_the_block():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(70, 5)), rng.normal(size=(50, 5)) + 0.3
    mmd2, p, sigma = mmd_test(x, y, permutations=99, seed=3)
    assert mmd2 == pytest.approx(_mmd_reference(x, y, sigma), rel=1e-9)
    z = np.concatenate([x, y])
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(axis=2))[np.triu_indices(len(z), 1)]
    assert sigma == pytest.approx(np.median(d), rel=1e-6)
    assert mmd_test(x, y, permutations=99, seed=3, block=7) == pytest.approx((mmd2, p, sigma), rel=1e-9)
    assert 0.01 <= p <= 1 and (p * 100) == pytest.approx(round(p * 100))  # (1 + count) / (1 + 99)


def test_two_halves_of_one_collection_are_calibrated():
    """50 seeded splits of 2,000 vectors into halves: both tests reject at 0.05 at most 12% of the time."""
    x = _collection(2000, seed=5)
    p_mmd, p_clf = [], []
    for s in range(50):
        r = np.random.default_rng(100 + s).permutation(len(x))
        a, b = x[r[:1000]], x[r[1000:]]
        p_mmd.append(mmd_test(a, b, permutations=300, seed=s)[1])
        p_clf.append(classifier_test(a, b, seed=s)[1])
    p_mmd, p_clf = np.array(p_mmd), np.array(p_clf)
    assert (p_mmd < 0.05).mean() <= 0.12, p_mmd
    assert (p_clf < 0.05).mean() <= 0.12, p_clf
    # roughly uniform, not all near 1 (a test that never rejects would pass the line above)
    for p in (p_mmd, p_clf):
        assert 0.3 < np.median(p) < 0.7 and (p < 0.25).mean() > 0.1


def test_a_small_shift_in_a_few_dimensions_is_detected_by_both_tests():
    """0.2 standard deviations in 10 of 128 dimensions, 2,000 vectors per collection."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(2000, 128)), rng.normal(size=(2000, 128))
    b[:, :10] += 0.2
    r = compare_collections((np.arange(2000), a), (np.arange(2000), b), permutations=500, progress=False)
    assert r.mmd_p < 0.01 and r.classifier_p < 0.01
    assert r.accuracy > 0.55 and r.mmd2 > 0
    assert (r.sample_a, r.sample_b, r.n_a, r.n_b) == (2000, 2000, 2000, 2000)


def test_a_cluster_only_in_b_is_the_top_over_represented_cluster():
    both = _collection(5700, d=32, seed=2)
    a = both[:3000]
    rng = np.random.default_rng(3)
    planted = (rng.normal(size=32) * 6 + rng.normal(size=(300, 32))).astype(np.float32)
    b = np.concatenate([both[3000:], planted])
    ids_b = np.array([f"b{i}" for i in range(2700)] + [f"planted{i}" for i in range(300)])
    r = compare_collections((np.arange(3000), a), (ids_b, b), clusters=12, permutations=200, progress=False)
    top = r.over_represented(1).iloc[0]
    members = ids_b[r.labels_b == top.cluster]
    assert np.char.startswith(members.astype(str), "planted").mean() > 0.9
    assert top.n_b >= 290 and top.n_a == 0 and top.q_value < 1e-6
    assert all(i.startswith("planted") for i in top.examples_b) and len(top.examples_b) == 6
    assert r.mmd_p < 0.01 and r.classifier_p < 0.01


def test_cluster_shares_add_up_and_q_values_follow_p_values():
    a, b = _collection(500, d=16, seed=1), _collection(400, d=16, seed=1)
    table, la, lb = cluster_shares(a, b, k=6)
    assert table["n_a"].sum() == 500 and table["n_b"].sum() == 400
    assert np.allclose(table["share_b"] - table["share_a"], table["difference"])
    assert (table["q_value"] >= table["p_value"] - 1e-12).all()
    assert (np.abs(table["difference"]).diff().dropna() <= 1e-12).all()  # largest first
    assert np.array_equal(np.bincount(la, minlength=6)[table["cluster"]], table["n_a"])
    assert len(lb) == 400


@pytest.fixture
def two_collections(opt, tmp_path):
    """Two SST collections encoded by one SupCon checkpoint, and A encoded by a second one."""
    ckpt0, ckpt1 = tmp_path / "m0.pth", tmp_path / "m1.pth"
    save_checkpoint(opt, ckpt0)
    save_checkpoint(opt, ckpt1, seed=1)
    pre = {}
    for name, seed in (("a", 3), ("b", 4)):
        pre[name] = write_preproc(tmp_path / f"{name}_preproc.h5", n_valid=160, n_train=40, size=16, seed=seed)
        args = ["extract", pre[name], "--model", f"supcon:{ckpt0}", "-o", str(tmp_path / "out") + "/"]
        assert main([*args, "--no-progress"]) == 0
    assert (
        main(["extract", pre["a"], "--model", f"supcon:{ckpt1}", "-o", str(tmp_path / "other") + "/", "--no-progress"])
        == 0
    )
    return tmp_path, pre


def test_cli_compare_writes_the_report_folder(two_collections, capsys):
    tmp, pre = two_collections
    a, b = tmp / "out" / "a_latents.h5", tmp / "out" / "b_latents.h5"
    capsys.readouterr()
    args = ["compare", str(a), str(b), "--projection", "pca", "--images", pre["a"], pre["b"], "--clusters", "5"]
    assert main([*args, "--permutations", "99", "--no-progress", "--names", "MODIS,VIIRS"]) == 0
    out = tmp / "out" / "a_latents_vs_b_latents_compare"
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    names = {"report.md", "report.html", "summary.json", "clusters.parquet", "points.parquet", "projection.png",
             "explorer.html", "clusters.png"}  # fmt: skip
    assert names <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["a"], summary["b"], summary["n_a"], summary["n_b"]) == ("MODIS", "VIIRS", 200, 200)
    assert 0 < summary["mmd_p"] <= 1 and 0 < summary["classifier_p"] <= 1
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert clusters["n_a"].sum() == 200 and len(clusters) == 5
    points = pd.read_parquet(out / "points.parquet")
    assert len(points) == 400 and points["id"].is_unique and set(points["collection"]) == {"MODIS", "VIIRS"}
    assert {"PC0", "PC1", "cluster", "lat", "lon"} <= set(points.columns)
    md = (out / "report.md").read_text()
    assert "MMD²" in md and "| cluster |" in md and "![projection.png](projection.png)" in md
    page = (out / "explorer.html").read_text()
    assert '"collection"' in page and "VIIRS" in page and "data:image/" in page  # the column, and thumbnails


def test_cli_compare_refuses_two_models_unless_forced_and_same_items_compares_them(two_collections, capsys):
    tmp, _ = two_collections
    a, other = tmp / "out" / "a_latents.h5", tmp / "other" / "a_latents.h5"
    capsys.readouterr()
    assert main(["compare", str(a), str(other), "--projection", "none", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different models" in err and "--force" in err and "--same-items" in err
    args = ["compare", str(a), str(other), "--projection", "none", "--permutations", "50", "-o", str(tmp / "forced")]
    assert main([*args, "--force", "--no-progress"]) == 0
    assert (tmp / "forced" / "report.html").exists()
    # the same checkpoint at another path is the same model
    copy = tmp / "elsewhere" / "copy.pth"
    copy.parent.mkdir()
    copy.write_bytes((tmp / "m0.pth").read_bytes())
    extract = ["extract", str(tmp / "b_preproc.h5"), "--model", f"supcon:{copy}", "-o", str(tmp / "copy") + "/"]
    assert main([*extract, "--no-progress"]) == 0
    args = ["compare", str(a), str(tmp / "copy" / "b_latents.h5"), "--projection", "none", "--permutations", "50"]
    assert main([*args, "-o", str(tmp / "copied"), "--no-progress"]) == 0
    assert main(["compare", str(a), str(a), "--same-items", "-o", str(tmp / "self"), "--no-progress"]) == 0
    assert json.loads((tmp / "self" / "summary.json").read_text())["mean_overlap"] == pytest.approx(1.0)
    assert main(["compare", str(a), str(other), "--same-items", "-o", str(tmp / "same"), "--no-progress"]) == 0
    summary = json.loads((tmp / "same" / "summary.json").read_text())
    assert summary["n"] == 200 and summary["only_a"] == 0 and summary["mean_overlap"] < 0.9
    overlap = pd.read_parquet(tmp / "same" / "overlap.parquet")
    assert len(overlap) == 200 and overlap["overlap"].mean() == pytest.approx(summary["mean_overlap"])
    changed = pd.read_parquet(tmp / "same" / "most_changed.parquet")
    assert changed["overlap"].is_monotonic_increasing and changed["overlap"].iloc[0] == overlap["overlap"].min()


def test_cli_compare_progress_covers_the_report_and_says_what_runs(tmp_path, capsys):
    """The stages bar of the tests, then the report's (projection, explorer page, files): none ends before
    its work does, and each says what runs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, seed in (("a", 1), ("b", 2)):
        x = _collection(120, 8, seed=seed)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)
        pq.write_table(
            pa.table({"id": [f"{name}{i}" for i in range(120)], "vector": vec}), tmp_path / f"{name}.parquet"
        )
    args = ["compare", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"), "--projection", "pca", "--force"]
    assert main([*args, "--permutations", "20", "--clusters", "3", "-o", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    order = ["compare: MMD² test", "compare: k-means clusters", "compare: done", "report: PCA projection",
             "report: explorer page", "report: report files", "report: done"]  # fmt: skip
    at = [err.find(s) for s in order]
    assert -1 not in at and at == sorted(at), (at, err)
    assert "3/3" in err[at[2] : at[3]] and "3/3" in err[at[-1] :]  # each bar full only once its work is done


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
def test_report_and_explorer_pages_in_chromium(two_collections, capsys):
    """The report's pictures load; the compare page filters by collection as pandas does."""
    from playwright.sync_api import sync_playwright

    tmp, pre = two_collections
    a, b = tmp / "out" / "a_latents.h5", tmp / "out" / "b_latents.h5"
    args = ["compare", str(a), str(b), "--projection", "pca", "--images", pre["a"], pre["b"], "--clusters", "4"]
    assert main([*args, "--permutations", "50", "--no-progress", "-o", str(tmp / "rep")]) == 0
    points = pd.read_parquet(tmp / "rep" / "points.parquet")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"file://{tmp / 'rep' / 'report.html'}")
        widths = page.evaluate("[...document.images].map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == 2 and min(widths) > 100  # projection.png and clusters.png
        assert page.locator("table").count() == 2
        page.screenshot(path=str(tmp / "rep" / "report_screen.png"), full_page=True)
        page.goto(f"file://{tmp / 'rep' / 'explorer.html'}")
        page.wait_for_function("window.nenya && window.nenya.ready", timeout=120_000)
        shown = page.evaluate("nenya.setFilter('collection', ['b_latents']) && nenya.shownIds()")
        assert shown == points.loc[points["collection"] == "b_latents", "id"].tolist()
        browser.close()
    assert not errors


def _npy_latents(path, ids, vectors) -> str:
    """A memory-mapped ``.npy`` + ``.parquet`` latents pair, as open_latents reads them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    np.save(path, vectors)
    pq.write_table(pa.table({"id": [str(i) for i in ids]}), str(path).replace(".npy", ".parquet"))
    return str(path)


def test_streamed_cluster_shares_equal_the_in_memory_ones_and_a_sample_fit_finds_the_planted_cluster(
    tmp_path, monkeypatch
):
    """Collections too large for memory: the clusters are streamed from the files. With the k-means sample
    holding every item they are cluster_shares' own (labels, counts, z, examples); above
    KMEANS_SAMPLE (made small here) compare_collections fits on a sample of the union, reads the files
    slab by slab (slabs of 700: many) and still finds the cluster planted in B alone."""
    import nenya.analysis.shift as shift
    from nenya.analysis.latents import open_latents
    from nenya.analysis.shift import streamed_shares

    both = _collection(5700, d=32, seed=2)
    rng = np.random.default_rng(3)
    planted = (rng.normal(size=32) * 6 + rng.normal(size=(300, 32))).astype(np.float32)
    a, b = both[:3000], np.concatenate([both[3000:], planted])
    ids_a = np.array([f"a{i}" for i in range(3000)], dtype=object)
    ids_b = np.array([f"b{i}" for i in range(2700)] + [f"planted{i}" for i in range(300)], dtype=object)
    la_path = _npy_latents(tmp_path / "a.npy", ids_a, a)
    lb_path = _npy_latents(tmp_path / "b.npy", ids_b, b)
    monkeypatch.setattr(shift, "SLAB", 700)
    want, wa, wb = cluster_shares(a, b, k=12, ids_a=ids_a, ids_b=ids_b)
    lat_a, lat_b = open_latents(la_path, metadata=False), open_latents(lb_path, metadata=False)
    got, ga, gb = streamed_shares(lat_a, lat_b, k=12, ids_a=lat_a.ids, ids_b=lat_b.ids)
    assert np.array_equal(ga, wa) and np.array_equal(gb, wb)
    pd.testing.assert_frame_equal(got, want)  # counts, shares, z, p, q and the examples nearest each centre

    monkeypatch.setattr(shift, "KMEANS_SAMPLE", 2000)  # a third of the union
    r = compare_collections(la_path, lb_path, clusters=12, permutations=200, force=True, progress=False)
    top = r.over_represented(1).iloc[0]
    assert top.n_b >= 290 and top.n_a == 0 and all(i.startswith("planted") for i in top.examples_b)
    assert r.clusters["n_a"].sum() == 3000 and r.clusters["n_b"].sum() == 3000
    members = ids_b[r.labels_b == top.cluster]
    assert np.char.startswith(members.astype(str), "planted").mean() > 0.9
