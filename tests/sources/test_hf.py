"""The Hugging Face datasets source (``hf:``) on datasets written by the ``datasets`` library itself:
vectors equal the encoder on the same images, splits chosen, metadata carried, bad images recorded
as skips, image paths that lead outside the dataset's folder refused."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from nenya._errors import InputError
from nenya.extract import extract_collection
from nenya.preprocess.cpu import decode_image
from nenya.sources import SourceOptions
from nenya.sources.hf import HFDatasetSource, find_layout
from photokit import picture, save, small_encoder

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _split(seeds: range, name: str):
    """A Dataset of in-memory pictures (stored by datasets.Image as PNG), a label, a caption, a list."""
    data = {
        "image": [picture(s, size=(36, 44)) for s in seeds],
        "label": [s % 3 for s in seeds],
        "caption": [f"{name} {s}" for s in seeds],
        "tags": [[s, s + 1] for s in seeds],  # not one value a row: not carried
    }
    return datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())


def _reference(enc, seeds) -> np.ndarray:
    x = np.stack([decode_image(_png(picture(s, size=(36, 44))), transform=enc.preprocess.image) for s in seeds])
    with torch.no_grad():
        return enc.encode(torch.from_numpy(x)).numpy()


def test_cli_on_a_save_to_disk_folder_equals_the_encoder(tmp_path):
    root = tmp_path / "flowers"
    datasets.DatasetDict({"train": _split(range(6), "train"), "test": _split(range(10, 14), "test")}).save_to_disk(
        str(root)
    )
    out = tmp_path / "v.parquet"
    cmd = [sys.executable, "-m", "nenya", "extract", "--source", f"hf:{root}", "--split", "test"]
    cmd += ["--model", "timm:resnet18", "--size", "32", "--batch-size", "3", "--workers", "1"]
    r = subprocess.run(cmd + ["--output", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(out)
    assert list(df["id"]) == [f"test/{i}" for i in range(4)]
    assert list(df.columns) == ["id", "path", "label", "caption", "vector"]
    assert list(df["caption"]) == [f"test {s}" for s in range(10, 14)] and list(df["label"]) == [1, 2, 0, 1]
    assert df["path"][0] == f"{root / 'test' / 'data-00000-of-00001.arrow'}#0"
    enc = small_encoder()  # the CLI's model: the same seed-0 random weights
    np.testing.assert_allclose(np.stack(df["vector"]), _reference(enc, range(10, 14)), rtol=1e-4, atol=2e-5)


def test_parquet_layout_splits_files_and_row_groups(tmp_path):
    root = tmp_path / "hub"
    for name, parts in (("train", (range(0, 5), range(5, 9))), ("test", (range(20, 23),))):
        for k, seeds in enumerate(parts):
            path = root / "data" / f"{name}-{k:05d}-of-{len(parts):05d}.parquet"
            _split(seeds, name).to_parquet(str(path), batch_size=2)  # row groups of 2 rows
    assert find_layout(str(root)).split == "train" and len(find_layout(str(root)).files) == 2
    enc = small_encoder()
    for split, seeds in ((None, range(9)), ("test", range(20, 23))):
        out = tmp_path / f"{split}.parquet"
        summary = extract_collection(
            f"hf:{root}", enc, str(out), source_options=SourceOptions(split=split), options=_run(batch=4, workers=2)
        )
        assert summary.items == len(seeds)
        df = pd.read_parquet(out)
        assert list(df["id"]) == [f"{split or 'train'}/{i}" for i in range(len(seeds))]
        assert list(df["label"]) == [s % 3 for s in seeds] and "tags" not in df.columns
        np.testing.assert_allclose(np.stack(df["vector"]), _reference(enc, seeds), rtol=1e-4, atol=2e-5)
    with pytest.raises(InputError, match="no split 'valid'.*test, train"):
        find_layout(str(root), "valid")


def _run(batch: int, workers: int = 0):
    from nenya.engines.runner import RunOptions

    return RunOptions(batch_size=batch, num_workers=workers, shard_size=4, progress=False)


def test_bad_images_are_skips_and_paths_outside_the_folder_are_refused(tmp_path):
    root = tmp_path / "ds"
    save(picture(1), str(root / "images" / "inside.png"), "PNG")
    save(picture(2), str(tmp_path / "secret.png"), "PNG")  # exists, but outside the dataset's folder
    rows = {
        "good": {"bytes": _png(picture(0)), "path": None},
        "file": {"bytes": None, "path": "images/inside.png"},  # read from the file, relative to the folder
        "junk": {"bytes": b"not an image at all", "path": "junk.png"},
        "gone": {"bytes": None, "path": "images/missing.png"},
        "up": {"bytes": None, "path": "../secret.png"},
        "abs": {"bytes": None, "path": str(tmp_path / "secret.png")},
        "none": None,
    }
    features = datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": list(rows.values()), "id": list(rows)}, features=features)
    ds.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"), batch_size=3)  # keeps paths as written
    out = tmp_path / "v.parquet"
    enc = small_encoder()
    extract_collection(f"hf:{root}", enc, str(out), options=_run(batch=3))
    status = dict(pd.read_csv(str(out) + ".status.csv")[["id", "status"]].values)
    assert status["good"] == status["file"] == "ok"
    assert status["junk"].startswith("skipped:") and status["gone"] == "skipped:missing file"
    assert status["up"] == status["abs"] == "skipped:path outside the dataset folder"
    assert status["none"] == "skipped:no image"
    df = pd.read_parquet(out)
    assert list(df["id"]) == ["good", "file"]  # the `id` column gives the ids
    assert df["path"][1] == str(root / "images" / "inside.png")
    x = np.stack([decode_image(_png(picture(s)), transform=enc.preprocess.image) for s in (0, 1)])
    np.testing.assert_allclose(np.stack(df["vector"]), enc.encode(torch.from_numpy(x)).detach().numpy(), atol=2e-5)


def test_splits_columns_and_ids_said_clearly(tmp_path):
    root = tmp_path / "two"
    datasets.DatasetDict({"a": _split(range(4), "a"), "b": _split(range(2), "b")}).save_to_disk(str(root))
    transform = small_encoder().preprocess.image
    with pytest.raises(InputError, match="splits a, b; choose one with --split"):
        HFDatasetSource(str(root), transform=transform).plan(8)
    src = HFDatasetSource(str(root), transform=transform, split="b", columns=["caption"])
    batch = next(src.read(src.plan(8).shards[0], 8))
    assert batch.ids == ["b/0", "b/1"] and set(batch.metadata) == {"path", "caption"}
    one = tmp_path / "one"
    _split(range(2), "x").save_to_disk(str(one))
    assert HFDatasetSource(str(one), transform=transform).plan(8).total == 2
    with pytest.raises(InputError, match="leave out --split"):
        HFDatasetSource(str(one), transform=transform, split="test").plan(8)
    with pytest.raises(InputError, match="not unique"):
        HFDatasetSource(str(root), transform=transform, split="a", id_column="label").plan(8)  # 0, 1, 2, 0
    with pytest.raises(InputError, match="not images"):
        HFDatasetSource(str(root), transform=transform, split="a", image_column="caption").plan(8)


def test_parquet_files_at_a_url(tmp_path):
    import fsspec

    local = tmp_path / "train-00000-of-00001.parquet"
    _split(range(3), "m").to_parquet(str(local), batch_size=2)
    fs = fsspec.filesystem("memory")
    fs.put(str(local), "/hfmem/data/train-00000-of-00001.parquet")
    try:
        src = HFDatasetSource("memory://hfmem", transform=small_encoder().preprocess.image)
        plan = src.plan(2)
        batches = [b for s in plan.shards for b in src.read(s, 2)]
        assert [i for b in batches for i in b.ids] == ["train/0", "train/1", "train/2"]
        assert all(b.status is None for b in batches)
        src.close()
    finally:
        fs.rm("/hfmem", recursive=True)
