"""Outputs record the model that made them: queries are encoded the same way, appends stay comparable."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from nenya import cli
from nenya._errors import OutputError
from nenya.analysis import read_about
from nenya.encoders import load_encoder
from nenya.encoders.base import EncoderOptions, options_from_about
from nenya.engines.runner import RunOptions
from nenya.extract import extract_collection, extract_preproc
from photokit import picture, save

OPTS = RunOptions(batch_size=4, shard_size=8, num_workers=0, device="cpu", progress=False)


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for i in range(6):
        save(picture(i, size=(40, 56)), root / f"p{i}.jpg", "JPEG", quality=92)
    return root


def encoder(size: int):
    return load_encoder("timm:resnet18", options=EncoderOptions(size=size, interpolation="bilinear")).to("cpu")


def test_every_format_records_the_model_and_its_options(photos, tmp_path, preproc, checkpoint, opt):
    enc = encoder(48)
    for name in ("v.parquet", "v.npy"):
        extract_collection(f"images:{photos}", enc, str(tmp_path / name), options=OPTS)
    a, b = read_about(tmp_path / "v.parquet"), read_about(tmp_path / "v.npy")
    assert a == b
    assert a["model"] == "timm:resnet18" and a["dim"] == 512 and a["precision"] == "fp32"
    assert options_from_about(a) == EncoderOptions(size=48, interpolation="bilinear")
    assert len(a["vectors"]) == 16
    sup = load_encoder(f"supcon:{checkpoint[0]}", opt=opt).to("cpu")
    out = extract_preproc([str(preproc)], sup, str(tmp_path / "h5"), options=OPTS).outputs[0]
    h = read_about(out)
    assert h["model"] == f"supcon:{checkpoint[0]}" and h["dim"] == sup.dim and h["vectors"] != a["vectors"]
    assert read_about(tmp_path / "nope.parquet") is None  # a missing file: nothing recorded


def test_appending_vectors_of_another_preprocessing_is_refused(photos, tmp_path):
    out = str(tmp_path / "v.parquet")
    extract_collection(f"images:{photos}", encoder(48), out, options=OPTS)
    before = pd.read_parquet(out)
    save(picture(9, size=(40, 56)), photos / "p9.jpg", "JPEG", quality=92)
    with pytest.raises(
        OutputError,
        match=r"another model or preprocessing.*--size 48.*--size 64.*--overwrite; in Python: overwrite=True",
    ):
        extract_collection(f"images:{photos}", encoder(64), out, options=OPTS)
    pd.testing.assert_frame_equal(pd.read_parquet(out), before)  # untouched
    summary = extract_collection(f"images:{photos}", encoder(48), out, options=OPTS)  # the same model appends
    assert summary.items == 1 and len(pd.read_parquet(out)) == 7
    summary = extract_collection(f"images:{photos}", encoder(64), out, options=OPTS, overwrite=True)
    assert summary.items == 7 and read_about(out)["options"]["size"] == 64


def test_search_by_image_encodes_the_query_as_the_latents_were_made(photos, tmp_path, caplog):
    out = str(tmp_path / "v.parquet")
    extract_collection(f"images:{photos}", encoder(48), out, options=OPTS)
    assert cli.main(["index", out]) == 0
    index = str(tmp_path / "v.faiss")
    # no --model: the index records the model and --size 48 (the model's default would be 224 px)
    assert (
        cli.main(["search", index, "--image", str(photos / "p3.jpg"), "-k", "2", "-o", str(tmp_path / "s.parquet")])
        == 0
    )
    hits = pd.read_parquet(tmp_path / "s.parquet")
    assert hits["id"].iloc[0] == "p3.jpg" and hits["score"].iloc[0] < 1e-6
    # naming the same model picks up the recorded options too
    assert (
        cli.main(
            [
                "search",
                out,
                "--image",
                str(photos / "p3.jpg"),
                "--model",
                "timm:resnet18",
                "-k",
                "1",
                "-o",
                str(tmp_path / "s2.parquet"),
            ]
        )
        == 0
    )
    assert pd.read_parquet(tmp_path / "s2.parquet")["score"].iloc[0] < 1e-6
    with caplog.at_level(logging.WARNING):  # another model: a warning, and the user's choice is honoured
        assert (
            cli.main(
                [
                    "search",
                    out,
                    "--image",
                    str(photos / "p3.jpg"),
                    "--model",
                    "timm:resnet34",
                    "-k",
                    "1",
                    "-o",
                    str(tmp_path / "s3.parquet"),
                ]
            )
            == 0
        )
    assert "made by timm:resnet18 but the query is encoded by timm:resnet34" in caplog.text
    far = pd.read_parquet(tmp_path / "s3.parquet")["score"].iloc[0]
    assert np.isfinite(far) and far > 1e-3


def test_the_record_never_holds_a_password_or_secret_token(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-SECRET-123456")
    enc = encoder(32)
    enc.spec = "timm:resnet18"
    enc.opts_file = "s3://alice:pa55word@bucket/opts.json"
    enc.options = EncoderOptions(size=32, weights="https://h/w.safetensors?token=tok-SECRET-123456")
    text = str(enc.about())
    assert "pa55word" not in text and "tok-SECRET-123456" not in text and "s3://***@bucket/opts.json" in text


def test_nenya_latents_record_the_checkpoint_so_cutout_queries_need_no_model(
    tmp_path, preproc, checkpoint, opt, monkeypatch
):
    import h5py

    from nenya.encoders.supcon import SupConEncoder

    monkeypatch.chdir(checkpoint[0].parent)
    enc = SupConEncoder.from_checkpoint("last.pth", opt).to("cpu")  # a relative path, as Nenya's scripts pass it
    out = extract_preproc([str(preproc)], enc, str(tmp_path / "lat"), options=OPTS).outputs[0]
    assert read_about(out)["model"] == f"supcon:{checkpoint[0]}"  # absolute: usable from any folder
    with h5py.File(preproc) as f:
        np.save(tmp_path / "q.npy", f["valid"][5])
    monkeypatch.chdir(tmp_path)
    assert cli.main(["search", out, "--image", "q.npy", "-k", "1", "-o", "s.parquet"]) == 0
    hit = pd.read_parquet(tmp_path / "s.parquet")
    assert hit["id"].iloc[0] == "valid/5" and hit["score"].iloc[0] < 1e-8
