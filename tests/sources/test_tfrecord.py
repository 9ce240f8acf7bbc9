"""The TFRecord source: vectors equal the encoder on the arrays the test wrote, HRRR-like records
through `nenya extract`, gzip, explicit shapes, raw and image bytes, ids from a feature, and a
truncated file named with its record and byte."""

from __future__ import annotations

import gzip
import io
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import make_opts
from nenya._errors import InputError
from nenya.cli import main
from nenya.encoders import load_encoder
from nenya.encoders.weights import load_checkpoint
from nenya.params import Params, option_preprocess
from nenya.sources import SourceOptions
from nenya.sources.tfrecord import TFRecordSource
from nenya.train.contrastive import train_run
from photokit import radar_record, write_tfrecord


def _read(src) -> tuple[list[str], np.ndarray, dict]:
    plan = src.plan(4)
    batches = [b for s in plan.shards for b in src.read(s, 3)]
    meta = {c: [v for b in batches for v in b.metadata[c]] for c in batches[0].metadata}
    return [i for b in batches for i in b.ids], np.concatenate([b.data for b in batches]), meta


def test_extract_vectors_equal_the_encoder_on_the_written_arrays(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    write_tfrecord(tmp_path / "hrrr.tfrecord", [radar_record(i, 16, 16) for i in range(1, 8)])
    out = tmp_path / "v.parquet"
    args = ["extract", "--source", f"tfrecord:{tmp_path / 'hrrr.tfrecord'}", "--feature", "ref", "--shape", "size"]
    assert main([*args, "--id-feature", "time", "--model", f"supcon:{path}", "-o", str(out), "--no-progress"]) == 0
    df = pd.read_parquet(out)
    assert list(df["id"]) == [f"2021-06-0{i}T00" for i in range(1, 8)]
    assert list(df["valid_time"]) == [f"2021-06-0{i}T01" for i in range(1, 8)]
    x = np.stack([np.random.default_rng(i).normal(size=(1, 16, 16)).astype(np.float32) for i in range(1, 8)])
    enc = load_encoder(f"supcon:{path}").to("cpu")
    with torch.no_grad():
        expected = enc.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.stack(df["vector"]), expected, rtol=1e-4, atol=1e-5)


def test_a_truncated_file_is_an_error_naming_record_and_byte(tmp_path):
    path = tmp_path / "cut.tfrecord"
    write_tfrecord(path, [radar_record(i) for i in range(1, 4)])
    data = path.read_bytes()
    path.write_bytes(data[:-30])
    with pytest.raises(InputError) as err:
        TFRecordSource(str(path), feature="ref", shape="size").plan(8)
    msg = str(err.value)
    assert "cut.tfrecord" in msg and "record 2 at byte" in msg and "truncated" in msg
    path.write_bytes(data)
    with pytest.raises(InputError, match="no feature 'reff'"):
        TFRecordSource(str(path), feature="reff", shape="size").plan(8)


def test_gzip_explicit_shape_raw_and_image_bytes(tmp_path):
    plain = tmp_path / "a.tfrecord"
    write_tfrecord(plain, [radar_record(i) for i in (1, 2)])
    with open(plain, "rb") as src, gzip.open(tmp_path / "a.tfrecord.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    ids, x, _ = _read(TFRecordSource(str(plain), feature="ref", shape="size"))
    ids_gz, x_gz, _ = _read(TFRecordSource(str(tmp_path / "a.tfrecord.gz"), feature="ref", shape=(6, 5)))
    assert ids == ["a/0", "a/1"] and ids_gz == ["a/0", "a/1"]
    np.testing.assert_array_equal(x, x_gz)

    raw = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)  # H, W, C
    png = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(png, format="PNG")
    write_tfrecord(tmp_path / "raw.tfrecord", [{"x": (raw.tobytes(), "byte"), "label": (7, "int")}])
    write_tfrecord(tmp_path / "img.tfrecord", [{"x": (png.getvalue(), "byte")}])
    _, xr, meta = _read(TFRecordSource(str(tmp_path / "raw.tfrecord"), feature="x", shape="2,4,3"))
    np.testing.assert_array_equal(xr[0], raw.transpose(2, 0, 1))
    assert list(meta["label"]) == [7] and list(meta["record"]) == [0]
    _, xi, _ = _read(TFRecordSource(str(tmp_path / "img.tfrecord"), feature="x"))
    np.testing.assert_array_equal(xi[0], np.arange(48, dtype=np.float32).reshape(4, 4, 3).transpose(2, 0, 1))
    with pytest.raises(InputError, match="do not fill the shape"):
        _read(TFRecordSource(str(tmp_path / "raw.tfrecord"), feature="x", shape="5,5"))
    assert SourceOptions().records.feature is None


def test_hrrr_like_records_train_an_autoencoder_and_a_contrastive_model(tmp_path, capsys):
    """The radar recipe without conversion: TFRecords -> `nenya train autoencoder` -> `nenya extract`;
    and SimCLR with images_file = tfrecord:PATTERN."""
    for f in range(2):
        write_tfrecord(tmp_path / f"hrrr_{f}.tfrecord", [radar_record(10 * f + i, 16, 16) for i in range(1, 5)])
    spec = f"tfrecord:{tmp_path / 'hrrr_*.tfrecord'}"
    ae = ["train", "autoencoder", "--data", spec, "--feature", "ref", "--shape", "size", "--nlayers", "2"]
    ae += ["--poolsize", "2", "--numfilters", "2", "--num-dense", "8", "--num-steps", "6", "--num-checkpoints", "2"]
    assert main([*ae, "--batch-size", "4", "-o", str(tmp_path / "ae"), "--no-progress"]) == 0
    ckpt = load_checkpoint(tmp_path / "ae" / "last.pth")
    assert ckpt["step"] == 6 and ckpt["opt"].raw_shape == [1, 16, 16]
    out = tmp_path / "v.parquet"
    args = [
        "extract",
        "--source",
        spec,
        "--feature",
        "ref",
        "--shape",
        "size",
        "--model",
        f"ae:{tmp_path / 'ae' / 'last.pth'}",
    ]
    assert main([*args, "-o", str(out), "--no-progress"]) == 0
    df = pd.read_parquet(out)
    x = np.stack([np.random.default_rng(10 * f + i).normal(size=(1, 16, 16)) for f in range(2) for i in range(1, 5)])
    enc = load_encoder(f"ae:{tmp_path / 'ae' / 'last.pth'}").to("cpu")
    with torch.no_grad():
        expected = enc.encode(torch.from_numpy(x.astype(np.float32))).numpy()
    np.testing.assert_allclose(np.stack(df["vector"]), expected, rtol=1e-4, atol=1e-5)
    assert list(df["id"]) == [f"hrrr_{f}/{r}" for f in range(2) for r in range(4)]

    opts = make_opts(tmp_path, images_file=spec, feature="ref", shape="size", nchannels=1, feat_dim=8, epochs=1,
                     batch_size_train=4, random_jitter=None, cosine=False)  # fmt: skip
    summary = train_run(option_preprocess(Params(opts)), progress=False, output=str(tmp_path / "simclr"))
    assert summary.steps == 2 and (tmp_path / "simclr" / "last.pth").exists()
