"""The WebDataset source through `nenya extract`: vectors equal the encoder on the same images, JSON
metadata carried, bad samples recorded as skips, damaged shards named, gzip and brace patterns."""

from __future__ import annotations

import gzip
import io
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from nenya._errors import InputError
from nenya.extract import extract_collection
from nenya.preprocess.cpu import decode_image
from nenya.sources import SourceOptions
from nenya.sources.webdataset import WebDatasetSource, expand_braces
from photokit import picture, small_encoder, write_wds


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    picture(seed, size=(48, 40)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _shards(folder, n_shards: int = 3, per: int = 4):
    folder.mkdir(exist_ok=True)
    blobs = {}
    for s in range(n_shards):
        samples = []
        for j in range(per):
            key = f"{s * per + j:06d}"
            blobs[key] = _jpeg(s * per + j)
            samples.append((key, {"jpg": blobs[key], "json": {"caption": f"c{key}", "shard": s}}))
        write_wds(folder / f"part-{s:04d}.tar", samples)
    return blobs


def test_vectors_equal_the_encoder_on_the_decoded_images(tmp_path):
    blobs = _shards(tmp_path / "shards")
    enc = small_encoder()
    out = tmp_path / "v.parquet"
    summary = extract_collection(f"wds:{tmp_path / 'shards' / 'part-{0000..0002}.tar'}", enc, str(out))
    assert summary.items == 12
    df = pd.read_parquet(out)
    assert list(df["id"]) == sorted(blobs)
    x = torch.from_numpy(np.stack([decode_image(blobs[k], transform=enc.preprocess.image) for k in df["id"]]))
    with torch.no_grad():
        expected = enc.encode(x).numpy()
    np.testing.assert_allclose(np.stack(df["vector"]), expected, rtol=1e-4, atol=1e-5)
    assert list(df["caption"]) == [f"c{k}" for k in df["id"]] and list(df["shard"]) == [0] * 4 + [1] * 4 + [2] * 4
    assert df["path"][0].endswith("part-0000.tar#000000.jpg")


def test_bad_samples_are_recorded_skips_naming_shard_and_member(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_wds(
        folder / "a.tar", [("k0", {"jpg": _jpeg(0)}), ("k1", {"jpg": b"not a jpeg at all"}), ("k2", {"json": {"x": 1}})]
    )
    out = tmp_path / "v.parquet"
    extract_collection(f"wds:{folder / 'a.tar'}", small_encoder(), str(out))
    status = pd.read_csv(str(out) + ".status.csv")
    reasons = dict(zip(status["id"], status["status"]))
    assert reasons["k0"] == "ok"
    assert reasons["k1"].startswith("skipped:") and reasons["k2"] == "skipped:no image in the sample"
    df = pd.read_parquet(out)
    assert list(df["id"]) == ["k0"]


def test_a_truncated_shard_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "shards"
    _shards(folder, n_shards=1, per=3)
    data = (folder / "part-0000.tar").read_bytes()
    (folder / "part-0000.tar").write_bytes(data[: len(data) // 2 + 100])
    src = WebDatasetSource(str(folder / "part-0000.tar"), transform=small_encoder().preprocess.image)
    with pytest.raises(InputError) as err:
        src.plan(8)
    assert "part-0000.tar" in str(err.value) and "damaged" in str(err.value) and "member" in str(err.value)


def test_gzip_shards_folders_repeated_keys_and_braces(tmp_path):
    assert expand_braces("s-{08..11}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("{a,b}/x-{1..2}.tar") == ["a/x-1.tar", "a/x-2.tar", "b/x-1.tar", "b/x-2.tar"]
    folder = tmp_path / "shards"
    folder.mkdir()
    for name in ("one", "two"):  # the same keys in both shards: ids get the shard's stem
        write_wds(folder / f"{name}.tar", [("k0", {"png": _jpeg(1)}), ("k1", {"jpg": _jpeg(2)})])
    with open(folder / "two.tar", "rb") as src, gzip.open(folder / "two.tar.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (folder / "two.tar").unlink()
    options = SourceOptions(transform=small_encoder().preprocess.image)
    src = WebDatasetSource.from_spec(str(folder), options)
    plan = src.plan(8)
    batches = [b for shard in plan.shards for b in src.read(shard, 8)]
    assert [i for b in batches for i in b.ids] == ["one/k0", "one/k1", "two/k0", "two/k1"]
    assert all(b.status is None for b in batches)
    np.testing.assert_array_equal(batches[0].data[0], batches[0].data[2])  # the gzip shard reads the same
