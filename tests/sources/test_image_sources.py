"""Image folders, path tables and arrays as sources: listing, batches, skip reasons, errors."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nenya._errors import InputError
from nenya.encoders.base import ImageTransform
from nenya.pipeline.items import Batch
from nenya.sinks.parquet import ParquetSink
from nenya.sources.arrays import ArraySource
from nenya.sources.images import ImageFolderSource
from nenya.sources.table import PathTableSource

T = ImageTransform(size=(16, 16), resize=None, crop=True)


def image(seed: int, size=(16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """Nested images (PNG: lossless), a corrupt and an empty one, and files that are not images."""
    root = tmp_path / "photos"
    good = {"a.png": image(0), "b.png": image(1), "sub/c.png": image(2), "sub/deeper/d.png": image(3)}
    for rel, arr in good.items():
        save(root / rel, arr)
    (root / "bad.jpg").write_bytes(b"\x00" * 300)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes((root / "a.png").read_bytes())
    (root / ".thumbs").mkdir()
    save(root / ".thumbs" / "x.png", image(9))
    return root, good


def all_batches(src, shard_size: int = 100, batch_size: int = 100) -> list[Batch]:
    plan = src.plan(shard_size)
    return [b for s in plan.shards for b in src.read(s, batch_size)]


def test_folder_listing_is_sorted_recursive_and_ignores_non_images(folder):
    root, good = folder
    src = ImageFolderSource(root, transform=T)
    plan = src.plan(shard_size=4)
    assert len(plan.groups) == 1
    g = plan.groups[0]
    assert g.partitions == {"": 6} and g.metadata_columns == {"": ["path"]} and g.name == "vectors"
    # the sink names the output: the source's stem plus its extension, or a name of its own
    assert ParquetSink(root.parent / "out").output_name(g) == "vectors.parquet"
    assert ParquetSink(root.parent / "out", name="x.parquet").output_name(g) == "x.parquet"
    assert [(s.partition, s.index, s.start, s.stop) for s in plan.shards] == [("", 0, 0, 4), ("", 1, 4, 6)]
    batches = all_batches(src, shard_size=4, batch_size=3)
    ids = [i for b in batches for i in b.ids]
    assert ids == ["a.png", "b.png", "bad.jpg", "empty.png", "sub/c.png", "sub/deeper/d.png"]
    assert [b.last for b in batches] == [False, True, True]
    assert np.concatenate([b.positions for b in batches]).tolist() == list(range(6))
    assert np.concatenate([b.rows for b in batches]).dtype == np.int64


def test_folder_batches_keep_bad_items_in_their_slot(folder):
    root, good = folder
    (batch,) = all_batches(ImageFolderSource(root, transform=T))
    assert batch.data.dtype == np.uint8 and batch.data.shape == (6, 3, 16, 16)
    assert batch.status == ["ok", "ok", "skipped:not an image", "skipped:empty file", "ok", "ok"]
    for i, rel in enumerate(batch.ids):
        if rel in good:
            np.testing.assert_array_equal(batch.data[i], good[rel].transpose(2, 0, 1))
        else:
            assert not batch.data[i].any()
    assert list(batch.metadata) == ["path"]
    assert batch.metadata["path"].tolist()[4] == str(root / "sub" / "c.png")


def test_all_bad_batch(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(b"nope" * i)
    (batch,) = all_batches(ImageFolderSource(root, transform=T))
    assert batch.status == ["skipped:empty file", "skipped:not an image", "skipped:not an image"]
    assert batch.data.shape == (3, 3, 16, 16) and not batch.data.any()


def test_all_good_batch_has_no_status(tmp_path):
    save(tmp_path / "p" / "x.png", image(5))
    (batch,) = all_batches(ImageFolderSource(tmp_path / "p", transform=T))
    assert batch.status is None


def test_skip_ids_removes_items_before_sharding(folder):
    root, _ = folder
    full = ImageFolderSource(root, transform=T)
    src = ImageFolderSource(root, transform=T, skip_ids={"a.png", "sub/c.png", "not-there.png"})
    plan = src.plan(shard_size=10)
    assert plan.groups[0].partitions == {"": 4}
    (batch,) = all_batches(src)
    assert batch.ids == ["b.png", "bad.jpg", "empty.png", "sub/deeper/d.png"]
    assert batch.positions.tolist() == [0, 1, 2, 3]
    assert batch.rows.tolist() == [1, 2, 3, 5]  # rows in the full listing
    assert plan.groups[0].fingerprint != full.plan(10).groups[0].fingerprint


def test_fingerprint_follows_listing_and_transform(folder):
    root, _ = folder
    fp = ImageFolderSource(root, transform=T).plan(10).groups[0].fingerprint
    assert fp == ImageFolderSource(root, transform=T).plan(10).groups[0].fingerprint
    other = ImageTransform(size=(16, 16), resize=20)
    assert fp != ImageFolderSource(root, transform=other).plan(10).groups[0].fingerprint
    save(root / "sub" / "e.png", image(7))
    assert fp != ImageFolderSource(root, transform=T).plan(10).groups[0].fingerprint


def test_folder_source_pickles_and_reads_in_a_copy(folder):
    root, _ = folder
    src = ImageFolderSource(root, transform=T)
    plan = src.plan(10)
    clone = pickle.loads(pickle.dumps(src))
    a, b = next(src.read(plan.shards[0], 10)), next(clone.read(plan.shards[0], 10))
    assert a.ids == b.ids and a.status == b.status
    np.testing.assert_array_equal(a.data, b.data)


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ImageFolderSource(tmp_path / "nope", transform=T).plan(10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        ImageFolderSource(tmp_path / "empty", transform=T).plan(10)
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(InputError, match="is a file"):
        ImageFolderSource(tmp_path / "f.png", transform=T).plan(10)
    with pytest.raises(ValueError, match="interpolation"):
        ImageFolderSource(tmp_path, transform=ImageTransform(interpolation="fancy"))


def test_resize_and_crop_in_the_reader(tmp_path):
    save(tmp_path / "i" / "wide.png", image(4, size=(40, 60)))
    src = ImageFolderSource(tmp_path / "i", transform=ImageTransform(size=(16, 16), resize=20))
    (batch,) = all_batches(src)
    assert batch.data.shape == (1, 3, 16, 16) and batch.status is None


def test_memory_filesystem_folder():
    fs = fsspec.filesystem("memory")
    arrays = {"x/1.png": image(10), "x/2.png": image(11), "y.png": image(12)}
    for rel, arr in arrays.items():
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        fs.pipe(f"/bucket-imgs/{rel}", buf.getvalue())
    fs.pipe("/bucket-imgs/broken.png", b"garbage")
    fs.pipe("/bucket-imgs/readme.md", b"# hi")
    src = ImageFolderSource("memory://bucket-imgs", transform=T)
    (batch,) = all_batches(src)
    assert batch.ids == ["broken.png", "x/1.png", "x/2.png", "y.png"]
    assert batch.status == ["skipped:not an image", "ok", "ok", "ok"]
    np.testing.assert_array_equal(batch.data[2], arrays["x/2.png"].transpose(2, 0, 1))
    assert batch.metadata["path"][1] == "memory://bucket-imgs/x/1.png"
    fs.rm("/bucket-imgs", recursive=True)


# -- path tables ---------------------------------------------------------------------------------
@pytest.fixture
def table_dir(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    d = tmp_path / "tab"
    imgs = {"imgs/one.png": image(20), "imgs/two.png": image(21)}
    for rel, arr in imgs.items():
        save(d / rel, arr)
    save(tmp_path / "elsewhere" / "three.png", image(22))
    imgs[str(tmp_path / "elsewhere" / "three.png")] = image(22)
    return d, imgs


def write_table(d: Path, name: str, df: pd.DataFrame) -> Path:
    path = d / name
    if name.endswith(".csv"):
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("name", ["list.csv", "list.parquet"])
def test_table_relative_and_absolute_paths_and_metadata(table_dir, name):
    d, imgs = table_dir
    df = pd.DataFrame(
        {
            "file": ["imgs/two.png", list(imgs)[2], "imgs/one.png", "imgs/missing.png"],
            "image_id": ["007", "b", "c", "d"],
            "label": [3, 1, 4, 1],
            "score": [0.5, 1.5, 2.5, 3.5],
            "name": ["x", "y", "z", "w"],
        }
    )
    src = PathTableSource(write_table(d, name, df), transform=T, path_column="file", id_column="image_id")
    plan = src.plan(3)
    assert plan.groups[0].partitions == {"": 4}
    assert plan.groups[0].metadata_columns == {"": ["path", "label", "score", "name"]}
    batches = all_batches(src, shard_size=3, batch_size=2)
    ids = [i for b in batches for i in b.ids]
    assert ids == ["007", "b", "c", "d"]  # ids stay strings, table order kept
    b0 = batches[0]
    np.testing.assert_array_equal(b0.data[0], imgs["imgs/two.png"].transpose(2, 0, 1))
    np.testing.assert_array_equal(b0.data[1], imgs[list(imgs)[2]].transpose(2, 0, 1))
    assert b0.metadata["path"][0] == str(d / "imgs" / "two.png")
    assert b0.metadata["label"].dtype == np.int64 and b0.metadata["label"].tolist() == [3, 1]
    assert b0.metadata["score"].dtype == np.float64
    assert b0.metadata["name"].tolist() == ["x", "y"]
    last = batches[-1]
    assert last.ids == ["d"] and last.status == ["skipped:missing file"] and last.rows.tolist() == [3]


def test_table_defaults_id_to_the_path_and_columns_subset(table_dir):
    d, _ = table_dir
    df = pd.DataFrame({"path": ["imgs/one.png", "imgs/two.png"], "a": [1, 2], "b": ["p", "q"]})
    src = PathTableSource(write_table(d, "t.csv", df), transform=T, columns=["b"])
    (batch,) = all_batches(src)
    assert batch.ids == ["imgs/one.png", "imgs/two.png"]
    assert list(batch.metadata) == ["path", "b"] and batch.status is None


def test_table_skip_ids(table_dir):
    d, _ = table_dir
    df = pd.DataFrame({"path": ["imgs/one.png", "imgs/two.png"]})
    src = PathTableSource(write_table(d, "t.csv", df), transform=T, skip_ids=["imgs/one.png"])
    (batch,) = all_batches(src)
    assert batch.ids == ["imgs/two.png"] and batch.rows.tolist() == [1] and batch.positions.tolist() == [0]


def test_table_missing_column_lists_the_columns(table_dir):
    d, _ = table_dir
    path = write_table(d, "t.csv", pd.DataFrame({"filename": ["imgs/one.png"], "x": [1]}))
    with pytest.raises(InputError, match=r"no path_column 'path'.*\['filename', 'x'\]"):
        PathTableSource(path, transform=T).plan(10)
    with pytest.raises(InputError, match=r"no id_column 'id'.*\['filename', 'x'\]"):
        PathTableSource(path, transform=T, path_column="filename", id_column="id").plan(10)
    with pytest.raises(InputError, match=r"'nope'.*\['filename', 'x'\]"):
        PathTableSource(path, transform=T, path_column="filename", columns=["nope"]).plan(10)


def test_table_duplicate_ids_name_an_example(table_dir):
    d, _ = table_dir
    df = pd.DataFrame({"path": ["imgs/one.png", "imgs/two.png", "imgs/one.png"]})
    with pytest.raises(InputError, match=r"not unique, e.g. 'imgs/one.png' \(2 rows\)"):
        PathTableSource(write_table(d, "t.csv", df), transform=T).plan(10)


def test_table_empty_path_keeps_its_slot(table_dir):
    d, _ = table_dir
    df = pd.DataFrame({"path": ["imgs/one.png", None], "id": ["a", "b"]})
    (batch,) = all_batches(PathTableSource(write_table(d, "t.parquet", df), transform=T, id_column="id"))
    assert batch.status == ["ok", "skipped:no path"]


def test_table_on_a_memory_filesystem():
    fs = fsspec.filesystem("memory")
    buf = io.BytesIO()
    Image.fromarray(image(30)).save(buf, format="PNG")
    fs.pipe("/tabs/pics/p.png", buf.getvalue())
    fs.pipe("/tabs/list.csv", b"path,k\npics/p.png,1\nmemory://tabs/pics/p.png,2\n")
    src = PathTableSource("memory://tabs/list.csv", transform=T)
    (batch,) = all_batches(src)
    assert batch.status is None and batch.metadata["path"].tolist() == ["memory://tabs/pics/p.png"] * 2
    np.testing.assert_array_equal(batch.data[0], batch.data[1])
    fs.rm("/tabs", recursive=True)


def test_table_unknown_format(tmp_path):
    (tmp_path / "list.xlsx").write_bytes(b"")
    with pytest.raises(InputError, match="format"):
        PathTableSource(tmp_path / "list.xlsx", transform=T).plan(10)


# -- arrays --------------------------------------------------------------------------------------
def test_arrays_float_and_uint8():
    x = np.random.default_rng(0).normal(size=(7, 8, 8)).astype(np.float64)
    src = ArraySource(x, metadata={"lat": np.arange(7) * 1.5})
    plan = src.plan(4)
    assert plan.groups[0].partitions == {"": 7} and plan.groups[0].metadata_columns == {"": ["lat"]}
    batches = all_batches(src, shard_size=4, batch_size=3)
    assert [len(b) for b in batches] == [3, 1, 3]
    b = batches[0]
    assert b.ids == ["0", "1", "2"] and b.data.shape == (3, 1, 8, 8) and b.data.dtype == np.float32
    np.testing.assert_allclose(b.data[:, 0], x[:3].astype(np.float32))
    assert batches[-1].metadata["lat"].tolist() == [6.0, 7.5, 9.0]
    u = np.zeros((2, 3, 4, 4), np.uint8)
    (bu,) = all_batches(ArraySource(u, ids=["p", "q"]))
    assert bu.data.dtype == np.uint8 and bu.ids == ["p", "q"]


def test_arrays_errors():
    with pytest.raises(InputError, match="expected images"):
        ArraySource(np.zeros((4, 4)))
    with pytest.raises(InputError, match="3 ids for 2 images"):
        ArraySource(np.zeros((2, 4, 4)), ids=["a", "b", "c"])
    with pytest.raises(InputError, match="not unique"):
        ArraySource(np.zeros((2, 4, 4)), ids=["a", "a"])
    with pytest.raises(InputError, match="one value per image"):
        ArraySource(np.zeros((2, 4, 4)), metadata={"m": [1, 2, 3]})


def test_arrays_memmap_and_h5_reopen_by_name(tmp_path):
    data = np.arange(5 * 6 * 6, dtype=np.float32).reshape(5, 6, 6)
    mm = np.memmap(tmp_path / "x.dat", mode="w+", dtype=np.float32, shape=data.shape)
    mm[:] = data
    mm.flush()
    src = ArraySource(np.memmap(tmp_path / "x.dat", mode="r", dtype=np.float32, shape=data.shape))
    blob = pickle.dumps(src)
    assert len(blob) < data.nbytes  # the pixels are not pickled
    plan = src.plan(10)
    (b,) = list(pickle.loads(blob).read(plan.shards[0], 10))
    np.testing.assert_array_equal(b.data[:, 0], data)
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["imgs"] = data
    with h5py.File(tmp_path / "x.h5", "r") as f:
        src = ArraySource(f["imgs"])
        plan = src.plan(2)
        clone = pickle.loads(pickle.dumps(src))
    got = np.concatenate([b.data for s in plan.shards for b in clone.read(s, 10)])
    np.testing.assert_array_equal(got[:, 0], data)
