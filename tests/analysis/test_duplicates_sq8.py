"""The memory-bounded near-duplicate search (8-bit codes, exact re-check) finds what the exact search finds."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nenya.analysis.duplicates import find_duplicates
from nenya.cli import main

N, D = 30_000, 32
# planted distances as fractions of the threshold: exact copies, well inside, just under, just over, outside
FRACTIONS = [0.0, 1e-3, 0.3, 0.7, 0.95, 0.99, 0.995, 1.005, 1.01, 1.05, 1.3, 2.0]


def _planted(metric: str, threshold: float, seed: int = 0) -> np.ndarray:
    """N gaussian vectors (nearest neighbours far above the threshold) plus, per fraction, three partners
    of random items at that fraction of the threshold, and one chain (a group of three)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    extra = []
    for f in np.repeat(FRACTIONS, 3):
        i = int(rng.integers(N))
        u = rng.normal(size=D)
        if metric == "l2":
            u /= np.linalg.norm(u)
            extra.append(x[i] + f * threshold * u)
        else:  # rotate away from x[i] by the angle whose 1 - cos is f x threshold, then rescale
            a = x[i] / np.linalg.norm(x[i])
            u -= (u @ a) * a
            u /= np.linalg.norm(u)
            theta = np.arccos(1.0 - f * threshold)
            extra.append((np.cos(theta) * a + np.sin(theta) * u) * rng.uniform(0.5, 2.0))
    j = int(rng.integers(N))
    extra += [x[j] * (1 + 1e-4), x[j] * (1 - 1e-4)] if metric == "cosine" else [x[j] + 1e-3, x[j] - 1e-3]
    return np.concatenate([x, np.array(extra)]).astype(np.float32)


def _write(tmp_path, vectors: np.ndarray) -> str:
    """X.npy (vectors) + X.parquet (ids, split): a memory-mapped latents file."""
    n = len(vectors)
    np.save(tmp_path / "v.npy", vectors)
    split = np.where(np.arange(n) % 2 == 0, "train", "valid")
    pq.write_table(pa.table({"id": [f"v/{i}" for i in range(n)], "split": split}), tmp_path / "v.parquet")
    return str(tmp_path / "v.npy")


def _same(got, want) -> None:
    assert got.threshold == want.threshold
    pd.testing.assert_frame_equal(got.pairs, want.pairs)
    pd.testing.assert_frame_equal(got.groups, want.groups)
    if got.leakage is not None:  # (an in-memory tuple without metadata has no split)
        key = ["id_a", "id_b"]
        pd.testing.assert_frame_equal(
            got.leakage.sort_values(key).reset_index(drop=True), want.leakage.sort_values(key).reset_index(drop=True)
        )


@pytest.mark.parametrize("metric, threshold", [("l2", 1.0), ("cosine", 0.01)])
def test_sq8_codes_find_the_exact_pairs_and_distances(tmp_path, metric, threshold):
    vectors = _planted(metric, threshold)
    path = _write(tmp_path, vectors)
    want = find_duplicates(path, threshold=threshold, metric=metric, exact=True, split_column="split", progress=False)
    # planted pairs under the threshold (and the chain) are found; those over it are not
    under = sum(f < 1 for f in FRACTIONS) * 3 + 3
    assert len(want.pairs) == under and (want.pairs["distance"] < threshold).all()
    assert want.pairs["distance"].max() > 0.98 * threshold  # the pairs just under it are there
    for kw in ({"codes": "sq8"}, {"codes": "sq8", "exact": True}):
        got = find_duplicates(path, threshold=threshold, metric=metric, split_column="split", progress=False, **kw)
        assert got.leakage is not None and len(got.leakage) > 0
        _same(got, want)
    ids = np.array([f"v/{i}" for i in range(len(vectors))], dtype=object)
    mapped = np.load(path, mmap_mode="r")
    _same(find_duplicates((ids, mapped), threshold=threshold, metric=metric, codes="sq8", progress=False), want)
    _same(find_duplicates((ids, vectors), threshold=threshold, metric=metric, codes="sq8", progress=False), want)


def test_auto_codes_follow_the_budget_and_auto_threshold_works(tmp_path, caplog):
    vectors = _planted("l2", 1.0)
    ids = np.array([f"v/{i}" for i in range(len(vectors))], dtype=object)
    with caplog.at_level(logging.INFO, logger="nenya.analysis.duplicates"):
        small = find_duplicates((ids, vectors), threshold=1.0, budget=1000, progress=False)
    assert "8-bit codes" in caplog.text and "--codes flat" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nenya.analysis.duplicates"):
        big = find_duplicates((ids, vectors), threshold=1.0, progress=False)
    assert "8-bit codes" not in caplog.text
    _same(small, big)
    auto = find_duplicates((ids, vectors), auto=True, codes="sq8", progress=False)
    assert auto.how.startswith("auto:") and 0 < auto.threshold
    with pytest.raises(ValueError, match="unknown codes"):
        find_duplicates((ids, vectors), threshold=1.0, codes="pq", progress=False)


def test_the_codes_flag(tmp_path, capsys):
    path = _write(tmp_path, _planted("l2", 1.0)[N - 2000 :])
    outs = []
    for codes in ("flat", "sq8"):
        out = tmp_path / f"{codes}_duplicates.parquet"
        args = ["duplicates", path, "--threshold", "1.0", "--codes", codes, "--split-column", "split"]
        assert main([*args, "-o", str(out), "--no-progress"]) == 0
        outs.append(pd.read_parquet(out))
    capsys.readouterr()
    assert len(outs[0]) > 0
    pd.testing.assert_frame_equal(outs[0], outs[1])
