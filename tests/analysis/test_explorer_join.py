"""``--join``: columns of another table (an outlier score, say) added by id to the explorer and the
server, to colour and filter by like any column."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nenya._errors import NenyaError
from nenya.analysis.explorer import join_columns
from nenya.cli import main


def _latents(path, n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"id": [f"v/{i}" for i in range(n)], "DT40": rng.gamma(2, 1, n)})
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.append_column("vector", pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8))
    pq.write_table(arrow, path)
    return table.assign(U0=rng.normal(size=n), U1=rng.normal(size=n))


def test_join_adds_columns_by_id_and_says_what_it_could_not(tmp_path, caplog):
    table = pd.DataFrame({"id": ["a", "b", "c", "d"], "DT40": [1.0, 2.0, 3.0, 4.0]})
    other = pd.DataFrame({"id": ["d", "b", "b", "x"], "score": [-4.0, -2.0, -9.0, 0.0], "DT40": [9.0, 9.0, 9.0, 9.0]})
    other.to_csv(tmp_path / "o.csv", index=False)
    with caplog.at_level(logging.WARNING):
        out = join_columns(table, [str(tmp_path / "o.csv")])
    assert out["id"].tolist() == ["a", "b", "c", "d"] and out["DT40"].tolist() == [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_array_equal(out["score"].to_numpy(), [np.nan, -2.0, np.nan, -4.0])
    assert "1 repeated ids" in caplog.text and "2 of 4 ids are not in it" in caplog.text
    pd.DataFrame({"key": [1]}).to_csv(tmp_path / "noid.csv", index=False)
    with pytest.raises(NenyaError, match="noid.csv: it needs an id column"):
        join_columns(table, [str(tmp_path / "noid.csv")])


def test_explore_colours_by_a_joined_outlier_score(tmp_path, capsys):
    lat = str(tmp_path / "x.parquet")
    table = _latents(lat)
    table[["id", "U0", "U1"]].to_parquet(tmp_path / "coords.parquet")
    assert main(["outliers", lat, "--method", "knn", "-k", "5", "-o", str(tmp_path / "out")]) == 0
    scores = pd.read_parquet(tmp_path / "out" / "outliers.parquet")
    page = str(tmp_path / "page.html")
    args = [
        "explore",
        lat,
        "--coords",
        str(tmp_path / "coords.parquet"),
        "--join",
        str(tmp_path / "out" / "outliers.parquet"),
    ]
    assert main([*args, "--color", "score", "-o", page]) == 0
    text = open(page, encoding="utf-8").read()
    data = json.loads(re.search(r'id="nenya-data">(.*?)</script>', text, re.S).group(1))
    names = [c["name"] for c in data["columns"]]
    assert data["colour"] == "score" and {"score", "rank", "outlier"} <= set(names)
    assert data["source"] == lat and data["stats"]["charts"]
    score = next(c for c in data["columns"] if c["name"] == "score")
    assert score["kind"] == "num" and score["lo"] == pytest.approx(scores["score"].min())
    assert score["hi"] == pytest.approx(scores["score"].max())
