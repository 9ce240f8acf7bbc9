"""Metadata of Nenya preproc files: Nenya stores every cell as text (numbers too); the typed outputs
(Parquet, Lance, the npy sidecar table) get numbers and timestamps, as pandas' CSV reader would type
them, one type per column of a file (every shard and partition alike); the ``_latents.h5`` output
keeps Nenya's text, byte for byte."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nenya.encoders.supcon import SupConEncoder
from nenya.engines.runner import RunOptions
from nenya.extract import extract_preproc
from nenya.sample_data import write_preproc
from nenya.sources import h5files
from nenya.sources.hdf5 import HDF5PreprocSource

# small shards: a column's type must not depend on which rows a shard happens to hold
OPTS = RunOptions(batch_size=4, shard_size=4, num_workers=0, device="cpu", progress=False)

#: (column, train cells, valid cells): what a non-Nenya tool may also have written
COLUMNS = [
    ("lat", ["10.5", "-3.25", "0.125", "7.0", "1.5"], ["45.0", "-60.0", "12.3456", "1e-05", "-0.5", "3.75", "8.0"]),
    # integers in every train row and in the first valid shard, decimals later: float64 everywhere
    ("score", ["1", "2", "3", "4", "5"], ["1", "2", "3", "4", "2.5", "7", "8"]),
    ("pp_idx", ["0", "1", "2", "3", "4"], ["0", "1", "2", "3", "4", "5", "6"]),
    ("gappy", ["1", "nan", "3", "4", "5"], ["1", "2", "nan", "4", "5", "6", "7"]),  # missing: float64, as pandas
    (
        "datetime",  # as pandas prints timestamps (Nenya's tables)
        ["2003-01-01 00:25:00", "2003-01-01 00:00:00", "2003-01-02 13:05:00", "NaT", "2003-01-03 23:59:59"],
        ["2004-02-29 00:05:00"] * 3 + ["2004-03-01 10:00:00.500000"] + ["2004-03-02 11:11:11"] * 3,
    ),
    ("day", ["2010-01-05", "2011-12-31", "2010-01-06", "2010-01-07", "2012-02-29"], ["2010-01-01"] * 7),
    ("pp_file", ["s3://b/a_preproc.h5"] * 5, ["s3://b/b_preproc.h5"] * 7),
    ("word", ["today", "now", "March", "x", "y"], ["a", "b", "c", "d", "e", "f", "g"]),  # never dates
    ("flag", ["True", "False", "True", "True", "False"], ["False"] * 7),  # booleans stay text
    ("mixed", ["1", "2", "3", "4", "5"], ["1", "2", "2010-01-05", "4", "5", "6", "7"]),  # number and date: text
    ("empty", ["nan"] * 5, ["nan"] * 7),  # nothing to type
]


def _write(path, columns=COLUMNS) -> str:
    write_preproc(path, n_valid=7, n_train=5, size=16, seed=2)
    with h5py.File(path, "a") as f:
        for j, part in ((1, "train"), (2, "valid")):
            del f[f"{part}_metadata"]
            table = np.array([c[j] for c in columns]).T.astype("S")
            meta = f.create_dataset(f"{part}_metadata", data=table)
            meta.attrs["columns"] = [c[0].encode() for c in columns]
    return str(path)


@pytest.fixture
def encoder(opt, checkpoint):
    return SupConEncoder.from_checkpoint(checkpoint[0], opt).to("cpu")


def _extract(preproc: str, encoder, out, fmt: str, partitions=("train", "valid")):
    summary = extract_preproc([preproc], encoder, str(out), fmt=fmt, partitions=partitions, options=OPTS)
    assert len(summary.outputs) == 1
    return summary.outputs[0]


def test_parquet_of_a_nenya_preproc_file_has_numbers_and_timestamps(encoder, tmp_path):
    """The file `nenya demo` makes, as a pandas or duckdb user reads its Parquet latents."""
    duckdb = pytest.importorskip("duckdb")
    preproc = write_preproc(tmp_path / "MODIS_x_preproc.h5", n_valid=11, n_train=6, size=16, seed=1)
    out = _extract(preproc, encoder, tmp_path / "pq", "parquet")
    schema = pq.read_schema(out)
    assert schema.field("lat").type == pa.float64() and schema.field("lon").type == pa.float64()
    assert schema.field("DT40").type == pa.float64() and schema.field("pp_idx").type == pa.int64()
    assert schema.field("pattern").type == pa.string()
    assert pa.types.is_timestamp(schema.field("datetime").type)
    types = dict(duckdb.sql(f"DESCRIBE SELECT * FROM '{out}'").fetchall()[i][:2] for i in range(len(schema)))
    assert types["lat"] == types["lon"] == types["DT40"] == "DOUBLE"
    assert (types["pp_idx"], types["pattern"], types["datetime"]) == ("BIGINT", "VARCHAR", "TIMESTAMP")

    df = pd.read_parquet(out)
    with h5py.File(preproc, "r") as f:
        for part in ("train", "valid"):
            cols = list(f[f"{part}_metadata"].attrs["columns"].astype(str))
            text = pd.DataFrame(f[f"{part}_metadata"][:].astype(str), columns=cols)
            rows = df[df.partition == part].sort_values("row")
            np.testing.assert_array_equal(rows["lat"], text["lat"].astype(float))
            np.testing.assert_array_equal(rows["pp_idx"], text["pp_idx"].astype(int))
            assert list(rows["datetime"]) == list(pd.to_datetime(text["datetime"]))
            assert list(rows["pattern"]) == list(text["pattern"])


def _csv_types(preproc: str) -> dict[str, str]:
    """The oracle: what pandas' CSV reader makes of the file's metadata (both partitions, one table)."""
    import io

    with h5py.File(preproc, "r") as f:
        cols = list(f["valid_metadata"].attrs["columns"].astype(str))
        text = np.concatenate([f["train_metadata"][:], f["valid_metadata"][:]]).astype(str)
    frame = pd.read_csv(io.StringIO("\n".join(",".join(r) for r in [cols, *text.tolist()])), dtype=None)
    return {c: str(frame[c].dtype) for c in cols}


@pytest.mark.parametrize("fmt", ["parquet", "npy", "lance"])
def test_one_type_per_column_in_every_shard_and_partition(encoder, tmp_path, fmt):
    preproc = _write(tmp_path / "odd_preproc.h5")
    out = _extract(preproc, encoder, tmp_path / fmt, fmt, partitions=("valid", "train"))
    if fmt == "lance":
        table = pytest.importorskip("lance").dataset(out).to_table()
    else:
        table = pq.read_table(out if fmt == "parquet" else out[: -len(".npy")] + ".parquet")
    assert table.num_rows == 12
    types = {c: table.schema.field(c).type for c in [c[0] for c in COLUMNS]}
    assert types == {
        "lat": pa.float64(),
        "score": pa.float64(),
        "pp_idx": pa.int64(),
        "gappy": pa.float64(),
        "datetime": pa.timestamp("us"),
        "day": pa.timestamp("us"),
        "pp_file": pa.string(),
        "word": pa.string(),
        "flag": pa.string(),
        "mixed": pa.string(),
        "empty": pa.string(),
    }
    csv = _csv_types(preproc)  # numbers as pandas' CSV reader types them
    assert {c: csv[c] for c in ("lat", "score", "pp_idx", "gappy")} == {
        "lat": "float64",
        "score": "float64",
        "pp_idx": "int64",
        "gappy": "float64",
    }
    df = table.to_pandas().set_index("id")
    assert df.loc["valid/4", "score"] == 2.5 and df.loc["train/2", "score"] == 3.0
    assert np.isnan(df.loc["train/1", "gappy"]) and df.loc["train/0", "gappy"] == 1.0
    assert df.loc["train/0", "datetime"] == pd.Timestamp("2003-01-01 00:25:00")
    assert pd.isna(df.loc["train/3", "datetime"])
    assert df.loc["valid/3", "datetime"] == pd.Timestamp("2004-03-01 10:00:00.5")
    assert df.loc["train/4", "day"] == pd.Timestamp("2012-02-29")
    assert df.loc["train/0", "word"] == "today" and df.loc["valid/2", "mixed"] == "2010-01-05"


def test_latents_h5_keeps_nenyas_text(encoder, tmp_path):
    """Text that Nenya (numpy, pandas) wrote comes back byte for byte; a number another tool spelled
    otherwise comes back as the same number in numpy's spelling ("1" of a float column: "1.0")."""
    preproc = _write(tmp_path / "odd_preproc.h5")
    out = _extract(preproc, encoder, tmp_path / "h5", "h5")
    names = [c[0] for c in COLUMNS]
    respelled = [names.index("score"), names.index("gappy")]
    with h5py.File(out, "r") as f, h5py.File(preproc, "r") as src:
        for part in ("train", "valid"):
            got, want = f[f"{part}_metadata"], src[f"{part}_metadata"]
            assert got.dtype.kind == "S" and list(got.attrs["columns"]) == list(want.attrs["columns"])
            same = [j for j in range(len(names)) if j not in respelled]
            np.testing.assert_array_equal(got[:][:, same], want[:][:, same])
            numbers = got[:][:, respelled].astype(str)
            np.testing.assert_array_equal(numbers.astype(float), want[:][:, respelled].astype(str).astype(float))
            assert set(np.char.str_len(numbers[numbers != "nan"]).tolist()) == {3}  # "1.0", "2.5": numpy's


def test_the_source_types_batches_from_the_whole_file_and_gives_text_when_asked(tmp_path):
    preproc = _write(tmp_path / "odd_preproc.h5")
    src = HDF5PreprocSource([preproc], partitions=("valid",))
    plan = src.plan(shard_size=4)
    first = next(src.read(plan.shards[0], 4))  # rows 0-3 of valid: integers in 'score', yet float64
    assert first.metadata["score"].dtype == np.float64 and first.metadata["pp_idx"].dtype == np.int64
    assert first.metadata["datetime"].dtype == np.dtype("datetime64[us]")
    assert first.metadata["word"].tolist() == ["a", "b", "c", "d"]
    src.close()
    text = HDF5PreprocSource([preproc], partitions=("valid",), typed_metadata=False)
    batch = next(text.read(text.plan(shard_size=4).shards[0], 4))
    assert batch.metadata["score"].tolist() == ["1", "2", "3", "4"]
    text.close()


@pytest.mark.parametrize(
    ("cells", "kind"),
    [
        (["1", "-2", "+3", "007"], "int64"),
        (["1", "2.5"], "float64"),
        (["1", ""], "float64"),  # a missing cell, as pandas' CSV reader would have it
        (["1", "NA", "None", "null", "nan"], "float64"),
        (["1e3", "inf", "-inf"], "float64"),
        (["18446744073709551615", "1"], "float64"),  # beyond int64
        (["2010-01-05", "2010-01-05T10:00:00Z", "2010-01-05 10:00:00+02:00", "NaT", ""], "datetime64[us]"),
        (["today", "now"], "str"),
        (["True", "False"], "str"),
        (["2010", "2010-01-05"], "str"),
        (["", "nan"], "str"),
        (["a,b", "1"], "str"),
    ],
)
def test_metadata_kinds(cells, kind):
    values = np.array(cells, dtype=str)
    # in one table or cell by cell in two: the same answer
    assert h5files.metadata_kinds([(["c"], values[:, None])]) == {"c": kind}
    halves = [(["c"], values[: len(values) // 2, None]), (["c"], values[len(values) // 2 :, None])]
    assert h5files.metadata_kinds(halves) == {"c": kind}
    typed = h5files.typed_column(values, kind)
    assert typed.dtype == np.dtype(kind) if kind != "str" else typed.dtype.kind == "U"


def test_typed_column_values():
    np.testing.assert_array_equal(h5files.typed_column(np.array(["1", "", "2.5"]), "float64"), [1.0, np.nan, 2.5])
    times = h5files.typed_column(np.array(["2010-01-05", "2010-01-05T10:00:00+02:00", "NaT"]), "datetime64[us]")
    assert times.astype(str).tolist() == ["2010-01-05T00:00:00.000000", "2010-01-05T08:00:00.000000", "NaT"]
    assert h5files.typed_column(np.array(["7", "-1"]), "int64").tolist() == [7, -1]


def test_analyses_keep_the_types(encoder, tmp_path):
    """`nenya umap` & co. read the Parquet latents: times stay times (not nanosecond integers)."""
    from nenya.analysis import open_latents

    preproc = write_preproc(tmp_path / "MODIS_x_preproc.h5", n_valid=9, n_train=0, size=16, seed=1)
    with open_latents(_extract(preproc, encoder, tmp_path / "pq", "parquet")) as lat:
        meta = lat.metadata
    assert pd.api.types.is_datetime64_any_dtype(meta["datetime"])
    assert meta["lat"].dtype == np.float64 and meta["pp_idx"].dtype == np.int64
    assert list(meta["pattern"]) == list(meta["pattern"].astype(str))
