"""Agreement between two encodings of the same items (nenya.analysis.compare): kNN overlap and linear CKA."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nenya.analysis.compare import _neighbours, compare_encodings, knn_overlap, linear_cka


def _clustered(n: int = 2000, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)) * 4
    x = centres[rng.integers(0, 20, n)] + rng.normal(size=(n, d))
    return np.array([f"item/{i}" for i in range(n)], dtype=object), x.astype(np.float32)


def _cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """CKA through the (n x n) Gram matrices, the textbook way."""
    x = x.astype(np.float64) - x.mean(0)
    y = y.astype(np.float64) - y.mean(0)
    kx, ky = x @ x.T, y @ y.T
    return float((kx * ky).sum() / (np.linalg.norm(kx) * np.linalg.norm(ky)))


def test_an_encoding_agrees_with_itself_and_its_rotations():
    ids, x = _clustered()
    same = compare_encodings((ids, x), (ids, x), k=10, progress=False)
    assert same.n == 2000 and same.only_a == same.only_b == 0 and same.exact
    assert same.mean_overlap == pytest.approx(1.0, abs=1e-6) and same.cka == pytest.approx(1.0, abs=1e-6)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(32, 32)))
    rotated = compare_encodings((ids, x), (ids, (x @ q).astype(np.float32) * 3.0 + 7.0), k=10, progress=False)
    assert rotated.mean_overlap == pytest.approx(1.0, abs=1e-6)
    assert rotated.cka == pytest.approx(1.0, abs=1e-6)


def test_unrelated_encodings_agree_little():
    ids, x = _clustered()
    y = np.random.default_rng(5).normal(size=(2000, 24)).astype(np.float32)
    r = compare_encodings((ids, x), (ids, y), k=10, progress=False)
    assert r.mean_overlap < 0.05 and r.cka < 0.1
    # the overlap is what a set computation gives, item by item
    assert r.per_item["id"].tolist() == ids.tolist()


def test_overlap_and_cka_equal_reference_computations():
    ids, x = _clustered(600, 16)
    y = x + np.random.default_rng(3).normal(scale=1.5, size=x.shape).astype(np.float32)
    r = compare_encodings((ids, x), (ids, y), k=7, progress=False)

    def knn(v):
        d = ((v[:, None, :].astype(np.float64) - v[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return np.argsort(d, axis=1, kind="stable")[:, :7]

    na, nb = knn(x), knn(y)
    want = [len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in zip(na, nb)]
    np.testing.assert_allclose(r.per_item["overlap"].to_numpy(), want, atol=1e-12)
    assert 0.2 < r.mean_overlap < 0.95
    assert r.cka == pytest.approx(_cka_reference(x, y), rel=1e-9)
    assert linear_cka(x, y) == pytest.approx(_cka_reference(x, y), rel=1e-9)
    worst = r.most_changed(5)
    assert worst["overlap"].is_monotonic_increasing and worst["overlap"].iloc[0] == min(want)
    assert knn_overlap(np.array([[1, 2, -1]]), np.array([[2, 3, -1]]))[0] == pytest.approx(1 / 3)


def test_exact_and_faiss_paths_agree():
    ids, x = _clustered(3000, 32)
    y = x + np.random.default_rng(4).normal(scale=0.8, size=x.shape).astype(np.float32)
    exact = compare_encodings((ids, x), (ids, y), k=10, progress=False)
    approx = compare_encodings((ids, x), (ids, y), k=10, exact_limit=0, progress=False)
    assert exact.exact and not approx.exact and exact.search == "exact" and approx.search.startswith("IVF")
    assert approx.mean_overlap == pytest.approx(exact.mean_overlap, abs=0.02)
    assert approx.cka == exact.cka


def test_ivf_path_at_30k_agrees_with_exact_and_reports_its_recall():
    """The approximate path (exact_limit lowered) on 30,000 vectors: mean overlap within 0.01 of the exact
    one; the recall it reports (1,000 sampled items) within 0.02 of the recall over all items; the sample's
    exact overlap is the exact overlap on those items."""
    rng = np.random.default_rng(7)
    n, d = 30_000, 32
    centres = rng.normal(size=(200, d)) * 1.5  # overlapping clusters: neighbourhoods cross the cells
    x = (centres[rng.integers(0, 200, n)] + rng.normal(size=(n, d))).astype(np.float32)
    y = x + rng.normal(scale=0.5, size=x.shape).astype(np.float32)
    ids = np.arange(n).astype(str).astype(object)
    r = compare_encodings((ids, x), (ids, y), k=10, progress=False, exact_limit=10_000)
    assert not r.exact and r.recall_queries == 1000 and "IVF" in r.search
    truth = [_neighbours(v, 10, "l2", True, False, "").rows for v in (x, y)]
    exact_overlap = knn_overlap(*truth)
    assert 0.3 < exact_overlap.mean() < 0.95
    assert r.mean_overlap == pytest.approx(exact_overlap.mean(), abs=0.01)
    sample = np.sort(np.random.default_rng(0).choice(n, 1000, replace=False))  # the items compare_encodings samples
    assert r.sample_overlap_exact == pytest.approx(exact_overlap[sample].mean(), abs=1e-9)
    assert r.sample_overlap == pytest.approx(r.per_item["overlap"].to_numpy()[sample].mean(), abs=1e-9)
    for v, t, reported in ((x, truth[0], r.recall_a), (y, truth[1], r.recall_b)):
        found = _neighbours(v, 10, "l2", False, False, "", sample)
        hits = (found.rows[:, :, None] == t[:, None, :]).any(axis=1).mean()
        assert found.recall == pytest.approx(reported) and 0.9 <= reported <= 1.0
        assert reported == pytest.approx(hits, abs=0.02)
    exact = compare_encodings((ids[:3000], x[:3000]), (ids[:3000], y[:3000]), k=10, progress=False)
    assert exact.exact and exact.search == "exact" and exact.recall_queries == 0 and np.isnan(exact.sample_overlap)


def test_files_joined_on_id_and_items_in_one_only_counted(tmp_path):
    ids, x = _clustered(500, 8)

    def write(path, rows):
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), 8)
        pq.write_table(pa.table({"id": pa.array(ids[rows].tolist()), "vector": vec}), path)

    rng = np.random.default_rng(0)
    a_rows = np.sort(rng.choice(500, 450, replace=False))
    b_rows = rng.permutation(np.sort(rng.choice(500, 420, replace=False)))  # another order
    write(tmp_path / "a.parquet", a_rows)
    write(tmp_path / "b.parquet", b_rows)
    r = compare_encodings(str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"), k=5, progress=False)
    common = np.intersect1d(a_rows, b_rows)
    assert r.n == len(common) and r.only_a == 450 - len(common) and r.only_b == 420 - len(common)
    assert r.per_item["id"].tolist() == ids[common].tolist()
    assert r.mean_overlap == pytest.approx(1.0) and r.cka == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="share 0 id"):
        compare_encodings((ids[:3], x[:3]), (np.array(["x", "y", "z"], dtype=object), x[:3]), progress=False)


def test_neighbour_searches_show_items_searched_or_no_bar(capsys):
    ids, x = _clustered(3000, 8)
    compare_encodings((ids, x), (ids, x[:, ::-1].copy()), k=5)
    err = capsys.readouterr().err
    for side in ("A", "B"):  # counted in items, chunk by chunk, and left at the end
        assert f"neighbours in {side}: 100%" in err and "3000/3000" in err, err
    assert "0/1 " not in err and "chunk" not in err
    compare_encodings((ids[:300], x[:300]), (ids[:300], x[:300]), k=5)  # one chunk: no bar that jumps to its end
    assert "neighbours in" not in capsys.readouterr().err


def test_the_report_says_how_neighbours_were_found(tmp_path):
    """summary.json and report.md name the search: exact, or the approximate one with its measured recall."""
    import json

    from nenya.analysis.compare_report import write_agreement_report

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    ids = np.array([f"i{i}" for i in range(3000)], dtype=object)
    y = x + rng.normal(scale=0.3, size=x.shape).astype(np.float32)
    for limit, word in ((10_000, "exact"), (1000, "approximate")):
        r = compare_encodings((ids, x), (ids, y), k=5, exact_limit=limit, progress=False)
        write_agreement_report(r, str(tmp_path / word), ("a", "b"))
        summary = json.loads((tmp_path / word / "summary.json").read_text())
        assert summary["search"] == r.search and summary["recall_a"] == r.recall_a
        text = (tmp_path / word / "report.md").read_text()
        assert f"Neighbours: k = 5, l2, {word}" in text and "HNSW" not in text
        if word == "approximate":
            assert f"recall@5 {r.recall_a:.3f} (A)" in text and summary["sample_overlap_exact"] is not None
